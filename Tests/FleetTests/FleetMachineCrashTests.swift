import Foundation
import Testing
@testable import TestSupport

/// A node's machine crashes while the node holds events for an absent
/// server. A test cannot crash the machine it runs on, so the node runs in
/// a VM (``TestVM``) with its `state_directory` on an ext4 disk image; the
/// guest's kernel is made to panic, which loses its page cache as a power
/// cut or a kernel crash does, and the disk keeps what reached it. The next
/// start, here on the host (another boot: another boot id), takes in the
/// file from the image.
@Suite("fleet: a node's machine crashes with events held", .serialized)
struct FleetMachineCrashTests {
    static let events = 2000

    /// An e2fsprogs tool, wherever this system keeps it.
    static func tool(_ name: String) throws -> String {
        try #require(["/usr/sbin/", "/sbin/", "/usr/bin/"].map { $0 + name }.first { FileManager.default.isExecutableFile(atPath: $0) },
                     "\(name) is missing (apt-get install e2fsprogs)")
    }

    static func run(_ tool: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// The guest's first process: loads the disk's and ext4's modules,
    /// mounts the disk, starts the node, waits until its buffer file counts
    /// every event taken, gives the syncer a second, and panics the kernel.
    static func initScript(modules: [String]) -> String {
        TestVM.initPreamble + """
        for m in \(modules.joined(separator: " ")); do insmod /modules/$m || echo "=== insmod failed: $m" >&3; done
        mkdir /disk
        mount -t ext4 /dev/vda /disk || echo "=== mount failed" >&3
        echo "=== boot $(cat /proc/sys/kernel/random/boot_id)" >&3
        /pipelined run /node.yaml 2>/tmp/node.log &
        i=0
        taken=0
        while [ $i -lt 1200 ]; do
            f=$(ls /disk/state/*.held 2>/dev/null | head -n 1)
            [ -n "$f" ] && taken=$(od -A n -t u8 -j 24 -N 8 "$f" | tr -d ' ')
            [ "$taken" = "\(events)" ] && break
            sleep 0.1
            i=$((i+1))
        done
        echo "=== taken $taken" >&3
        sleep 1
        echo "=== log" >&3
        cat /tmp/node.log >&3
        echo "=== crash" >&3
        sleep 1
        echo c > /proc/sysrq-trigger

        """
    }

    @Test("buffer: disk, the node's machine crashes (a kernel panic in a VM) while the node holds events for an absent server: the start on the next boot sends what buffer_sync wrote through to the disk, each event once, in order, no lost record",
          .enabled(if: NATSTests.enabled && TestVM.enabled("the machine crash test")), .timeLimit(.minutes(10)))
    func whatReachedTheDiskBeforeTheCrashIsSentOnTheNextBoot() throws {
        let scratch = try FleetScratch("machine-crash")
        defer { scratch.remove() }
        let files = FileManager.default
        let root = scratch.directory + "/root"
        try files.createDirectory(atPath: root + "/modules", withIntermediateDirectories: true)
        try files.copyItem(atPath: try #require(TestVM.binary), toPath: root + "/pipelined")
        var names: [String] = []
        for (index, module) in try TestVM.modules(["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]).enumerated() {
            let name = String(format: "%02d-", index) + URL(fileURLWithPath: module).lastPathComponent
            try files.copyItem(atPath: module, toPath: root + "/modules/" + name)
            names.append(name)
        }
        try Self.initScript(modules: names).write(toFile: root + "/init", atomically: true, encoding: .utf8)
        chmod(root + "/init", 0o755)
        let events = try scratch.events("events", count: Self.events)
        try files.copyItem(atPath: events, toPath: root + "/events.jsonl")
        // Nothing listens on the guest's 4222: the node holds every event.
        let sink = "state_directory: /disk/state\nbuffer: disk\nbuffer_bytes: 4MiB\nbuffer_sync: 200ms"
        let guestPipeline = try scratch.nodePipeline("node-a", events: "/events.jsonl", urls: ["nats://127.0.0.1:4222"], sink: sink)
        try files.moveItem(atPath: guestPipeline, toPath: root + "/node.yaml")

        let disk = scratch.directory + "/disk.img"
        try #require(files.createFile(atPath: disk, contents: nil))
        try FileHandle(forWritingAtPath: disk).map { try $0.truncate(atOffset: 64 << 20); try $0.close() }
        let made = try Self.run(try Self.tool("mkfs.ext4"), ["-q", "-F", disk])
        try #require(made.status == 0, "mkfs.ext4: \(made.output)")

        let (sections, console) = try TestVM.boot(root: root, disk: disk, timeoutSeconds: 600)
        let titles = sections.map(\.title)
        let log = sections.first { $0.title == "log" }?.lines.joined(separator: "\n") ?? ""
        try #require(titles.contains("crash"), "the guest did not get to its crash: \(titles)\n\(log)\nits console:\n\(console.suffix(4000))")
        #expect(titles.contains("taken \(Self.events)"), "\(titles)\n\(log)")
        #expect(console.contains("sysrq: Trigger a crash"), "the guest's kernel did not panic:\n\(console.suffix(2000))")

        // What a boot after the crash finds: the journal replayed, the file as the disk kept it.
        let checked = try Self.run(try Self.tool("e2fsck"), ["-f", "-y", disk])
        #expect(checked.status <= 1, "e2fsck: \(checked.output)")
        let kept = scratch.directory + "/kept"
        try files.createDirectory(atPath: kept, withIntermediateDirectories: true)
        let dumped = try Self.run(try Self.tool("debugfs"), ["-R", "rdump /state \(kept)", disk])
        let state = kept + "/state"
        let held = (try? files.contentsOfDirectory(atPath: state)) ?? []
        try #require(held.count == 1 && held[0].hasSuffix(".held"), "the disk's state_directory holds \(held): \(dumped.output)")

        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        try "".write(toFile: events, atomically: true, encoding: .utf8)
        let hostSink = "state_directory: \(state)\nbuffer: disk\nbuffer_bytes: 4MiB"
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: [server.url], sink: hostSink)
        let next = try CLI.run(["run", pipeline], timeout: 120)
        #expect(next.status == 0, "the start after the crash: \(FleetRecords.excerpt(next.stderr))")
        #expect(next.stderr.contains("on an earlier boot of this machine"), "\(FleetRecords.excerpt(next.stderr))")
        #expect(next.stderr.contains("held \(Self.events) event(s) the stream had not acknowledged: sending them again"), "\(FleetRecords.excerpt(next.stderr))")
        #expect(!next.stderr.contains("counted as lost"), "\(FleetRecords.excerpt(next.stderr))")
        let inspector = try StreamInspector(urls: [server.url])
        let payloads = try inspector.payloads("PIPELINED", expected: Self.events)
        let records = try FleetRecords.decode(payloads.joined(separator: "\n"))
        #expect(FleetRecords.lost(records) == 0)
        let numbers = FleetRecords.numbers(records)["node-a"] ?? []
        #expect(numbers == Array(0..<Self.events), "the stream holds \(numbers.count) events of node-a, first \(numbers.prefix(3)), last \(numbers.suffix(3))")
        #expect(inspector.settledCount("PIPELINED") == UInt64(Self.events))
    }
}
