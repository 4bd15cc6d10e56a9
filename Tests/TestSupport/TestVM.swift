import Foundation
import Testing

/// A Debian kernel booted in qemu with a root of the test's making
/// (`Tests/VM/boot.sh`): for what this machine's kernel cannot do (kprobes)
/// or a test cannot do to the machine it runs on (crash it). Such a test is
/// skipped with the reason printed when that kernel, qemu or busybox is
/// missing, unless `PIPELINED_REQUIRE_VM=1` (as `.ci/run` sets): then it
/// runs and fails.
public enum TestVM {
    public static let required = ProcessInfo.processInfo.environment["PIPELINED_REQUIRE_VM"] == "1"

    /// The boot script.
    static let bootScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("VM/boot.sh").path

    /// A kernel image whose build config has kprobes and BTF: Debian's
    /// `linux-image-amd64` in /boot, or `PIPELINED_VM_KERNEL`.
    public static let kernel: String? = {
        if let path = ProcessInfo.processInfo.environment["PIPELINED_VM_KERNEL"], !path.isEmpty { return path }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        return names.filter { $0.hasPrefix("vmlinuz-") }.sorted().last { name in
            let config = (try? String(contentsOfFile: "/boot/config-" + name.dropFirst("vmlinuz-".count), encoding: .utf8)) ?? ""
            return config.contains("\nCONFIG_KPROBES=y") && config.contains("\nCONFIG_DEBUG_INFO_BTF=y")
        }.map { "/boot/" + $0 }
    }()

    /// The `pipelined` executable that `swift build` made beside this test bundle.
    public static let binary: String? = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var url = URL(fileURLWithPath: exe).deletingLastPathComponent()
        while url.path != "/" {
            let candidate = url.appendingPathComponent("pipelined").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            url.deleteLastPathComponent()
        }
        return nil
    }()

    public static let unavailableReason: String? = {
        guard kernel != nil else {
            return "no kernel image with kprobes and BTF in /boot (apt-get install linux-image-amd64, or set PIPELINED_VM_KERNEL)"
        }
        for tool in ["qemu-system-x86_64", "busybox", "cpio"] where !onPath(tool) {
            return "\(tool) is missing (apt-get install qemu-system-x86 busybox-static cpio)"
        }
        if binary == nil { return "the pipelined executable was not built beside the tests" }
        return nil
    }()

    /// Whether a VM test runs; `what` names it in the skip message.
    public static func enabled(_ what: String) -> Bool {
        guard let reason = unavailableReason else { return true }
        if required { return true }
        print("skipping \(what): \(reason) (set PIPELINED_REQUIRE_VM=1 to fail instead)")
        return false
    }

    /// The start of a VM's `init`: busybox's applets, /dev, /proc, /sys, a
    /// /tmp and loopback up; descriptor 3 is the second serial port, which
    /// ``boot(root:disk:timeoutSeconds:)`` returns.
    public static let initPreamble = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t devtmpfs dev /dev
        mount -t proc proc /proc
        mount -t sysfs sys /sys
        mount -t tmpfs tmp /tmp
        ip link set lo up
        exec 3>/dev/ttyS1

        """

    public static func onPath(_ tool: String) -> Bool {
        (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
        }
    }

    /// The kernel's modules that `names` need, each after what it needs,
    /// as paths under /lib/modules/<release>; a module not listed in its
    /// modules.dep is taken to be built in.
    public static func modules(_ names: [String]) throws -> [String] {
        let kernel = try #require(kernel)
        let release = URL(fileURLWithPath: kernel).lastPathComponent.replacingOccurrences(of: "vmlinuz-", with: "")
        let base = "/lib/modules/\(release)/"
        let table = try String(contentsOfFile: base + "modules.dep", encoding: .utf8)
        var needs: [String: [String]] = [:]
        for line in table.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard let path = parts.first else { continue }
            needs[String(path)] = parts.count > 1 ? parts[1].split(separator: " ").map(String.init) : []
        }
        /// The path of module `name` (`-` and `_` are one).
        func path(_ name: String) -> String? {
            let wanted = name.replacingOccurrences(of: "-", with: "_")
            return needs.keys.first { key in
                let file = URL(fileURLWithPath: key).lastPathComponent
                return file.replacingOccurrences(of: "-", with: "_") == wanted + ".ko"
            }
        }
        var order: [String] = []
        func add(_ module: String) {
            guard !order.contains(module) else { return }
            for need in needs[module] ?? [] { add(need) }
            order.append(module)
        }
        for name in names { if let module = path(name) { add(module) } }
        return order.map { base + $0 }
    }

    /// Boots the VM on `root` (its `init` the first process; with `disk`, a
    /// raw image as /dev/vda) and returns what init wrote to its second
    /// serial port, split into sections at its `=== ` lines, and the
    /// console.
    public static func boot(root: String, disk: String? = nil, timeoutSeconds: Int = 900) throws -> (sections: [(title: String, lines: [String])], console: String) {
        let files = FileManager.default
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [bootScript, try #require(kernel), root, String(timeoutSeconds)]
        if let disk {
            var environment = ProcessInfo.processInfo.environment
            environment["PIPELINED_VM_DISK"] = disk
            process.environment = environment
        }
        let output = Pipe()
        let errorPath = root + ".stderr"
        try #require(files.createFile(atPath: errorPath, contents: nil))
        defer { try? files.removeItem(atPath: errorPath) }
        process.standardOutput = output
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errorPath))
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let errorText = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
        #expect(process.terminationStatus == 0, "boot.sh failed:\n\(errorText.suffix(4000))")

        var sections: [(title: String, lines: [String])] = []
        // A serial port ends lines with CR LF, one Character to Swift.
        for line in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) {
            let text = String(line)
            if text.hasPrefix("=== ") {
                sections.append((String(text.dropFirst(4)), []))
            } else if !sections.isEmpty {
                sections[sections.count - 1].lines.append(text)
            }
        }
        return (sections, errorText)
    }
}
