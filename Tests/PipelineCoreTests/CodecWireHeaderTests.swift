import CBPF
import PipelineCore
import Testing

/// Checks PipelineCore's tables against `bpf/wire.h`, the header the kernel
/// program is compiled from: read as text from the repository (so a new or
/// changed value there fails here) and through the CBPF module's C import.
@Suite("wire header")
struct CodecWireHeaderTests {
    /// `bpf/wire.h`, found relative to this file.
    private func headerText() throws -> String {
        var path = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        path.removeLast(3)  // Tests/PipelineCoreTests/<file>
        let header = path.joined(separator: "/") + "/bpf/wire.h"
        guard let text = readTextFile(atPath: header) else {
            throw HeaderError(message: "cannot open \(header)")
        }
        return text
    }

    struct HeaderError: Error { var message: String }

    /// `NAME = value,` entries of the C enum named `name`.
    private func enumValues(_ name: String, in text: String) throws -> [String: Int] {
        guard let start = text.firstRange(of: "enum \(name) {") else { throw HeaderError(message: "no enum \(name)") }
        guard let end = text[start.upperBound...].firstRange(of: "};") else { throw HeaderError(message: "unterminated enum") }
        var values: [String: Int] = [:]
        for line in text[start.upperBound..<end.lowerBound].split(separator: "\n") {
            let code = line.split(separator: "/*").first ?? ""
            let parts = code.split(separator: "=").map { String($0.filter { $0 != " " && $0 != "\t" && $0 != "," }) }
            guard parts.count == 2, let value = Int(parts[1]) else { continue }
            values[parts[0]] = value
        }
        return values
    }

    @Test func argTypesMatchTheHeader() throws {
        let tags = try enumValues("pl_arg_type", in: try headerText())
        var expected: [String: Int] = [:]
        let names: [ArgType: String] = [
            .int: "PL_INT_T", .string: "PL_STR_T", .stringArray: "PL_STR_ARR_T", .sockaddr: "PL_SOCKADDR_T",
            .openFlags: "PL_OPEN_FLAGS_T", .execFlags: "PL_EXEC_FLAGS_T", .socketDomain: "PL_SOCK_DOM_T",
            .socketType: "PL_SOCK_TYPE_T", .fileType: "PL_FILE_TYPE_T", .unlinkatFlags: "PL_UNLINKAT_FLAG_T",
            .ptraceRequest: "PL_PTRACE_REQ_T", .mountFlags: "PL_MOUNT_FLAG_T", .umountFlags: "PL_UMOUNT_FLAG_T",
        ]
        for type in ArgType.allCases { expected[names[type]!] = Int(type.rawValue) }
        expected["PL_NONE_T"] = 0
        #expect(tags == expected)
        // The same through the C import.
        #expect(Int(PL_SOCKADDR_T.rawValue) == Int(ArgType.sockaddr.rawValue))
        #expect(Int(PL_UMOUNT_FLAG_T.rawValue) == Int(ArgType.umountFlags.rawValue))
    }

    @Test func eventsAndTypeMasksMatchTheHeader() throws {
        let text = try headerText()
        let ids = try enumValues("pl_event_id", in: text)
        let tags = try enumValues("pl_arg_type", in: text)
        #expect(ids.count == EventCatalog.all.count)
        for kind in EventCatalog.all {
            let suffix = kind.name.uppercased()
            #expect(ids["PL_EV_\(suffix)"] == Int(kind.id), "\(kind.name)")
            // #define PL_TYPES_X (PL_ARG_TYPE0(PL_INT_T) | PL_ARG_TYPE1(PL_SOCKADDR_T))
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("#define PL_TYPES_\(suffix) ") }) else {
                Issue.record("no PL_TYPES_\(suffix)")
                continue
            }
            var mask: UInt64 = 0
            for slot in 0..<6 {
                guard let open = line.firstRange(of: "PL_ARG_TYPE\(slot)(") else { continue }
                let rest = line[open.upperBound...]
                let tag = String(rest.prefix { $0 != ")" })
                mask |= UInt64(tags[tag] ?? 255) << (8 * UInt64(slot))
            }
            #expect(mask == kind.typeMask, "\(kind.name): header \(String(mask, radix: 16)), catalog \(String(kind.typeMask, radix: 16))")
        }
    }

    @Test func scopesMatchTheHeader() throws {
        let scopes = try enumValues("pl_scope", in: try headerText())
        for scope in Scope.allCases {
            #expect(scopes["PL_SCOPE_\(scope.name.uppercased())"] == Int(scope.rawValue))
        }
    }

    @Test func contextHeaderLayout() {
        #expect(MemoryLayout<pl_sys_context_t>.size == WireDecoder.headerSize)
        #expect(Int(PL_SYS_CONTEXT_SIZE) == WireDecoder.headerSize)
        #expect(MemoryLayout<pl_sys_context_t>.offset(of: \.event_id) == 36)
        #expect(MemoryLayout<pl_sys_context_t>.offset(of: \.argnum) == 40)
        #expect(MemoryLayout<pl_sys_context_t>.offset(of: \.retval) == 44)
        #expect(MemoryLayout<pl_sys_context_t>.offset(of: \.comm) == 52)
        #expect(Int(PL_MAX_STR_ARR_ELEMENTS) == WireDecoder.maxStringArrayElements)
        #expect(Int(PL_MAX_ARGS) == Arguments.capacity)
    }

    /// A record laid out through the C struct decodes to the same fields.
    @Test func cStructRecordDecodes() throws {
        var context = pl_sys_context_t()
        context.ts = 77
        context.pid_id = 1
        context.mnt_id = 2
        context.host_ppid = 3
        context.host_pid = 4
        context.ppid = 5
        context.pid = 6
        context.uid = 7
        context.event_id = UInt32(PL_EV_CLOSE.rawValue)
        context.argnum = 1
        context.retval = -9
        withUnsafeMutableBytes(of: &context.comm) { raw in
            for (index, byte) in "sshd".utf8.enumerated() { raw[index] = byte }
        }
        var bytes = withUnsafeBytes(of: &context) { Array($0.prefix(Int(PL_SYS_CONTEXT_SIZE))) }
        bytes += [UInt8(PL_INT_T.rawValue), 3, 0, 0, 0]
        let event = try decodeGuarded(bytes, wallOffsetNs: 100).get()
        #expect(event == SyscallEvent(
            timeNs: 177, ktimeNs: 77, eventID: 3, retval: -9, pid: 6, ppid: 5, hostPid: 4, hostPpid: 3, uid: 7,
            pidNamespace: 1, mountNamespace: 2, comm: Comm("sshd"), args: Arguments([.int(3)])))
    }
}
