@testable import EventSinks
import Foundation
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
}
