@testable import EventSinks
import Foundation
import PipelineCore
import Synchronization
import Testing

/// The nats sink's state file, without a server: which start takes in the
/// file a killed run left (the fleet tests kill real nodes).
@Suite("held ledger")
/// A class, so that `deinit` removes the test's directory.
final class HeldLedgerTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "pipelined-held-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func open() throws -> (ledger: HeldLedger, leftover: HeldLedger.Leftover) {
        try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 0)
    }

    /// A run that took in `count` events and ended without closing: its
    /// ledger goes without `remove()`, which lets go of the lock as a
    /// killed process does and leaves the file.
    private func leaveKilledRun(holding count: UInt64) throws -> String {
        let (ledger, _) = try open()
        ledger.start(prefix: Array("node:boot:".utf8CString.dropLast()), sequence: 0)
        ledger.took(count)
        return ledger.path
    }

    private func files() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".held") }.sorted()
    }

    @Test func aFileIsTakenInByOneStartOnlyUntilItsLinesAreSafe() throws {
        let killed = try leaveKilledRun(holding: 5)
        let first = try open()
        #expect(first.leftover.paths == [killed] && first.leftover.events == 5)
        // A second instance of the stage starting before the first has its
        // lines elsewhere: the file is still the first one's to take in.
        let second = try open()
        #expect(second.leftover.paths.isEmpty && second.leftover.events == 0)
        HeldLedger.removeLeftovers(first.leftover)
        #expect(!FileManager.default.fileExists(atPath: killed))
        // The two running instances' own files are locked and stay.
        let third = try open()
        #expect(third.leftover.paths.isEmpty && third.leftover.events == 0)
        #expect(try files().count == 3)
        withExtendedLifetime((first.ledger, second.ledger, third.ledger)) {}
    }

    @Test func aStartThatFailsLetsGoOfTheFileForTheNext() throws {
        let killed = try leaveKilledRun(holding: 3)
        let failed = try open()
        #expect(failed.leftover.paths == [killed] && failed.leftover.events == 3)
        // What the sink does when its connection cannot start.
        failed.ledger.remove()
        HeldLedger.releaseLeftovers(failed.leftover)
        let next = try open()
        #expect(next.leftover.paths == [killed] && next.leftover.events == 3)
        HeldLedger.removeLeftovers(next.leftover)
        #expect(try files() == [URL(fileURLWithPath: next.ledger.path).lastPathComponent])
        withExtendedLifetime((failed.ledger, next.ledger)) {}
    }

    // MARK: buffer: disk after a crash of the machine

    /// Another boot's id, as the start after a crash reads in /proc.
    private static let laterBoot = Array("00000000-1111-2222-3333-444444444444".utf8)

    /// Lines of about a hundred bytes, so that a ring of them spans pages.
    private static let lines = (0..<200).map { "{\"seq\":\($0),\"pad\":\"\(String(repeating: "x", count: 80 + $0 % 17))\"}" }

    /// A run with a ring that held `lines` and was killed (or was running
    /// when the machine crashed): its outbox and ledger go without
    /// `remove()`. Returns the file and where each frame starts in it.
    private func leaveKilledRing(_ lines: [String]) throws -> (path: String, frames: [Int]) {
        let (ledger, _) = try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 64 << 10)
        ledger.start(prefix: Array("node:boot:".utf8CString.dropLast()), sequence: 0)
        let outbox = Outbox(capacity: 64 << 10, maxPending: 16, duplicateWindowNs: 1_000_000_000, ledger: ledger)
        let subject = outbox.addSubject("pipelined.test")
        var frames: [Int] = []
        var offset = HeldLedger.headerSize
        outbox.lock.withLock {
            for line in lines {
                frames.append(offset)
                offset += HeldLedger.span(line.utf8.count)
                let appended = Array(line.utf8).withUnsafeBytes { outbox.append($0, subject: subject, weight: 1) }
                #expect(appended)
            }
        }
        return (ledger.path, frames)
    }

    /// Overwrites `count` bytes of the file at `offset`, as a page that never
    /// reached the disk reads back (zeros) or one of an older lap.
    private func tear(_ path: String, at offset: Int, count: Int, with byte: UInt8 = 0) throws {
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data(repeating: byte, count: count))
        try handle.close()
    }

    private func text(_ spool: HeldLedger.Spool) -> [String] {
        spool.lines.map { String(decoding: $0, as: UTF8.self) }
    }

    @Test func aFileOfAnEarlierBootThatReachedTheDiskWholeIsSentWhole() throws {
        _ = try leaveKilledRing(Self.lines)
        let next = try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 64 << 10, boot: Self.laterBoot)
        let spool = try #require(next.leftover.spool)
        #expect(spool.earlierBoot && spool.held == 200 && spool.nextSequence == 200)
        #expect(text(spool) == Self.lines)
        #expect(next.leftover.events == 0)
        HeldLedger.removeLeftovers(next.leftover)
    }

    @Test func aTornFileOfAnEarlierBootIsSentUpToItsFirstTornFrame() throws {
        let (path, frames) = try leaveKilledRing(Self.lines)
        // One byte of line 120 is not what was written: the frames before it
        // are sent, the rest are the header's count less those.
        try tear(path, at: frames[120] + HeldLedger.frameHeader + 30, count: 1, with: UInt8(ascii: "y"))
        let next = try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 64 << 10, boot: Self.laterBoot)
        let spool = try #require(next.leftover.spool)
        #expect(spool.earlierBoot && spool.held == 200)
        #expect(text(spool) == Array(Self.lines.prefix(120)))
        HeldLedger.removeLeftovers(next.leftover)
    }

    @Test func aFileOfAnEarlierBootWhoseFirstPageNeverReachedTheDiskSendsNothing() throws {
        let (path, frames) = try leaveKilledRing(Self.lines)
        try tear(path, at: frames[0], count: 4096)
        let next = try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 64 << 10, boot: Self.laterBoot)
        let spool = try #require(next.leftover.spool)
        #expect(spool.lines.isEmpty && spool.held == 200)
        HeldLedger.removeLeftovers(next.leftover)
    }

    @Test func aTornFileOfThisBootIsCountedNotSent() throws {
        // On the boot that wrote it the page cache cannot tear a frame: a
        // frame that fails its checksum is damage, and nothing is trusted.
        let (path, frames) = try leaveKilledRing(Self.lines)
        try tear(path, at: frames[50] + HeldLedger.frameHeader, count: 1, with: UInt8(ascii: "y"))
        let next = try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 64 << 10)
        #expect(next.leftover.spool == nil && next.leftover.events == 200)
        HeldLedger.removeLeftovers(next.leftover)
    }

    @Test func aFileWhoseHeaderNeverReachedTheDiskIsReportedUnreadable() throws {
        let (path, _) = try leaveKilledRing(Self.lines)
        try tear(path, at: 0, count: 4096)
        let next = try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 64 << 10, boot: Self.laterBoot)
        #expect(next.leftover.spool == nil && next.leftover.events == 0)
        #expect(next.leftover.unreadable == [path])
        HeldLedger.removeLeftovers(next.leftover)
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func theSyncerWritesTheHeldLinesThrough() throws {
        let (ledger, _) = try HeldLedger.open(directory: directory, stage: "fleet", ringBytes: 64 << 10)
        ledger.start(prefix: Array("node:boot:".utf8CString.dropLast()), sequence: 0)
        let outbox = Outbox(capacity: 64 << 10, maxPending: 16, duplicateWindowNs: 1_000_000_000, ledger: ledger)
        let subject = outbox.addSubject("pipelined.test")
        let held = outbox.lock.withLock {
            for line in Self.lines { _ = Array(line.utf8).withUnsafeBytes { outbox.append($0, subject: subject, weight: 1) } }
            return outbox.heldRing()
        }
        let end = Self.lines.reduce(0) { $0 + HeldLedger.span($1.utf8.count) }
        #expect(held == [0..<end])
        let results = Mutex<[Result<Int, SystemError>]>([])
        let syncer = HeldLedger.Syncer(ledger: ledger, intervalNs: 10_000_000, name: "test-sync",
                                       held: { outbox.lock.withLock { outbox.heldRing() } }) { result in results.withLock { $0.append(result) } }
        let deadline = Date().addingTimeInterval(10)
        while results.withLock({ $0.count }) < 3, Date() < deadline { usleep(10_000) }
        syncer.stop()
        let seen = results.withLock { $0 }
        #expect(seen.count >= 3)
        for result in seen {
            // The held lines' pages (from the ring's first page) and the header page.
            guard case .success(let bytes) = result else { Issue.record("sync failed: \(result)"); continue }
            #expect(bytes == HeldLedger.headerSize + end)
        }
        ledger.remove()
    }
}
