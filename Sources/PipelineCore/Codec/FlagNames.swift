/// Symbolic names for the `u32` flag arguments (docs/event-record.md), x86-64 values.
///
/// A vocabulary has an optional enumerated field (a value under a mask that is
/// one name, like `O_ACCMODE` or a socket type) and a list of bit names. Text
/// is the field's name, then every bit name whose bits are all set, joined with
/// `|`, then whatever bits are left as lowercase hex (`0x...`). A value that
/// produces no token prints as `0`. Parsing ORs the tokens back together, so
/// every printed text parses to exactly the value it came from.
struct FlagVocabulary: Sendable {
    /// Bits of the enumerated field, 0 when the vocabulary has none.
    let fieldMask: UInt32
    /// Names of field values; a value without a name leaves its bits unknown.
    let fieldNames: [(value: UInt32, name: String)]
    /// Bit names in print order; a composite (several bits) comes before its parts.
    let bitNames: [(name: String, mask: UInt32)]
    /// Names accepted when parsing but never printed.
    let aliases: [(name: String, value: UInt32)]

    /// The longest text ``format`` can produce, for sizing output buffers.
    let maxLength: Int

    init(
        fieldMask: UInt32 = 0, fieldNames: [(UInt32, String)] = [], bitNames: [(String, UInt32)] = [],
        aliases: [(String, UInt32)] = []
    ) {
        self.fieldMask = fieldMask
        self.fieldNames = fieldNames.map { (value: $0.0, name: $0.1) }
        self.bitNames = bitNames.map { (name: $0.0, mask: $0.1) }
        self.aliases = aliases.map { (name: $0.0, value: $0.1) }
        let longestField = fieldNames.map(\.1.utf8.count).max() ?? 0
        let bits = bitNames.reduce(0) { $0 + $1.0.utf8.count + 1 }
        maxLength = longestField + 1 + bits + 11
    }

    /// Calls `token` with each name of `value` in order, then `unknown` with
    /// the leftover bits when there are any; returns false when nothing was
    /// emitted (the value prints as `0`).
    @inline(__always)
    func tokens(of value: UInt32, _ token: (String) -> Void, unknown: (UInt32) -> Void) -> Bool {
        var remaining = value
        var emitted = false
        if fieldMask != 0 {
            let field = value & fieldMask
            for entry in fieldNames where entry.value == field {
                token(entry.name)
                remaining &= ~fieldMask
                emitted = true
                break
            }
        }
        for entry in bitNames where remaining & entry.mask == entry.mask {
            token(entry.name)
            remaining &= ~entry.mask
            emitted = true
            if remaining == 0 { break }
        }
        if remaining != 0 {
            unknown(remaining)
            emitted = true
        }
        return emitted
    }

    /// The symbolic text of `value`.
    func format(_ value: UInt32) -> String {
        var parts: [String] = []
        let any = tokens(of: value, { parts.append($0) }, unknown: { parts.append("0x" + String($0, radix: 16)) })
        return any ? parts.joined(separator: "|") : "0"
    }

    /// Parses text ``format`` writes (also decimal and hex numbers, aliases,
    /// spaces around `|`); nil when a token is not a name of this vocabulary.
    func parse<S: StringProtocol>(_ text: S) -> UInt32? {
        var value: UInt32 = 0
        var sawToken = false
        for rawToken in text.split(separator: "|", omittingEmptySubsequences: false) {
            let token = rawToken.trimmedForFlags
            guard !token.isEmpty else { return nil }
            sawToken = true
            if let number = FlagVocabulary.number(token) {
                value |= number
            } else if let entry = fieldNames.first(where: { $0.name == token }) {
                value |= entry.value
            } else if let entry = bitNames.first(where: { $0.name == token }) {
                value |= entry.mask
            } else if let entry = aliases.first(where: { $0.name == token }) {
                value |= entry.value
            } else {
                return nil
            }
        }
        return sawToken ? value : nil
    }

    /// A decimal or `0x` hex number that fits in 32 bits.
    static func number(_ token: Substring) -> UInt32? {
        if token.hasPrefix("0x") || token.hasPrefix("0X") {
            let digits = token.dropFirst(2)
            guard !digits.isEmpty else { return nil }
            return UInt32(digits, radix: 16)
        }
        guard token.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return UInt32(token)
    }

    // MARK: - The vocabularies

    static let open = FlagVocabulary(
        fieldMask: 0o3,
        fieldNames: [(0, "O_RDONLY"), (1, "O_WRONLY"), (2, "O_RDWR")],
        bitNames: [
            ("O_CREAT", 0o100), ("O_EXCL", 0o200), ("O_NOCTTY", 0o400), ("O_TRUNC", 0o1000),
            ("O_APPEND", 0o2000), ("O_NONBLOCK", 0o4000),
            ("O_SYNC", 0o4010000), ("O_DSYNC", 0o10000), ("O_ASYNC", 0o20000), ("O_DIRECT", 0o40000),
            ("O_LARGEFILE", 0o100000), ("O_TMPFILE", 0o20200000), ("O_DIRECTORY", 0o200000),
            ("O_NOFOLLOW", 0o400000), ("O_NOATIME", 0o1000000), ("O_CLOEXEC", 0o2000000),
            ("__O_SYNC", 0o4000000), ("O_PATH", 0o10000000), ("__O_TMPFILE", 0o20000000),
        ],
        aliases: [("O_NDELAY", 0o4000), ("O_RSYNC", 0o4010000), ("FASYNC", 0o20000)]
    )

    static let exec = FlagVocabulary(bitNames: [("AT_SYMLINK_NOFOLLOW", 0x100), ("AT_EMPTY_PATH", 0x1000)])

    /// Address family names by number (AF_UNSPEC is 0), shared with sockaddr records.
    static let familyNames: [String] = [
        "AF_UNSPEC", "AF_UNIX", "AF_INET", "AF_AX25", "AF_IPX", "AF_APPLETALK", "AF_NETROM", "AF_BRIDGE",
        "AF_ATMPVC", "AF_X25", "AF_INET6", "AF_ROSE", "AF_DECnet", "AF_NETBEUI", "AF_SECURITY", "AF_KEY",
        "AF_NETLINK", "AF_PACKET", "AF_ASH", "AF_ECONET", "AF_ATMSVC", "AF_RDS", "AF_SNA", "AF_IRDA",
        "AF_PPPOX", "AF_WANPIPE", "AF_LLC", "AF_IB", "AF_MPLS", "AF_CAN", "AF_TIPC", "AF_BLUETOOTH",
        "AF_IUCV", "AF_RXRPC", "AF_ISDN", "AF_PHONET", "AF_IEEE802154", "AF_CAIF", "AF_ALG", "AF_NFC",
        "AF_VSOCK", "AF_KCM", "AF_QIPCRTR", "AF_SMC", "AF_XDP", "AF_MCTP",
    ]

    /// The family number of an `AF_*` name (`AF_LOCAL` and `AF_FILE` are `AF_UNIX`).
    static func family(named name: some StringProtocol) -> UInt16? {
        if let index = familyNames.firstIndex(where: { $0 == name }) { return UInt16(index) }
        if name == "AF_LOCAL" || name == "AF_FILE" { return 1 }
        return nil
    }

    static let socketDomain = FlagVocabulary(
        fieldMask: 0xFFFF_FFFF,
        fieldNames: familyNames.enumerated().map { (UInt32($0.offset), $0.element) },
        aliases: [("AF_LOCAL", 1), ("AF_FILE", 1)]
    )

    static let socketType = FlagVocabulary(
        fieldMask: 0xF,
        fieldNames: [
            (1, "SOCK_STREAM"), (2, "SOCK_DGRAM"), (3, "SOCK_RAW"), (4, "SOCK_RDM"), (5, "SOCK_SEQPACKET"),
            (6, "SOCK_DCCP"), (10, "SOCK_PACKET"),
        ],
        bitNames: [("SOCK_NONBLOCK", 0o4000), ("SOCK_CLOEXEC", 0o2000000)]
    )

    static let unlinkat = FlagVocabulary(bitNames: [("AT_REMOVEDIR", 0x200)])

    static let ptraceRequest = FlagVocabulary(
        fieldMask: 0xFFFF_FFFF,
        fieldNames: [
            (0, "PTRACE_TRACEME"), (1, "PTRACE_PEEKTEXT"), (2, "PTRACE_PEEKDATA"), (3, "PTRACE_PEEKUSER"),
            (4, "PTRACE_POKETEXT"), (5, "PTRACE_POKEDATA"), (6, "PTRACE_POKEUSER"), (7, "PTRACE_CONT"),
            (8, "PTRACE_KILL"), (9, "PTRACE_SINGLESTEP"), (12, "PTRACE_GETREGS"), (13, "PTRACE_SETREGS"),
            (14, "PTRACE_GETFPREGS"), (15, "PTRACE_SETFPREGS"), (16, "PTRACE_ATTACH"), (17, "PTRACE_DETACH"),
            (18, "PTRACE_GETFPXREGS"), (19, "PTRACE_SETFPXREGS"), (24, "PTRACE_SYSCALL"),
            (25, "PTRACE_GET_THREAD_AREA"), (26, "PTRACE_SET_THREAD_AREA"), (30, "PTRACE_ARCH_PRCTL"),
            (31, "PTRACE_SYSEMU"), (32, "PTRACE_SYSEMU_SINGLESTEP"), (33, "PTRACE_SINGLEBLOCK"),
            (0x4200, "PTRACE_SETOPTIONS"), (0x4201, "PTRACE_GETEVENTMSG"), (0x4202, "PTRACE_GETSIGINFO"),
            (0x4203, "PTRACE_SETSIGINFO"), (0x4204, "PTRACE_GETREGSET"), (0x4205, "PTRACE_SETREGSET"),
            (0x4206, "PTRACE_SEIZE"), (0x4207, "PTRACE_INTERRUPT"), (0x4208, "PTRACE_LISTEN"),
            (0x4209, "PTRACE_PEEKSIGINFO"), (0x420A, "PTRACE_GETSIGMASK"), (0x420B, "PTRACE_SETSIGMASK"),
            (0x420C, "PTRACE_SECCOMP_GET_FILTER"), (0x420D, "PTRACE_SECCOMP_GET_METADATA"),
            (0x420E, "PTRACE_GET_SYSCALL_INFO"), (0x420F, "PTRACE_GET_RSEQ_CONFIGURATION"),
            (0x4210, "PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG"), (0x4211, "PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG"),
            (0x4212, "PTRACE_SET_SYSCALL_INFO"),
        ],
        aliases: [("PTRACE_PEEKUSR", 3), ("PTRACE_POKEUSR", 6)]
    )

    static let mount = FlagVocabulary(
        bitNames: [
            // The old "magic" marker in the high 16 bits, as a whole, before its single bits.
            ("MS_MGC_VAL", 0xC0ED_0000),
            ("MS_RDONLY", 1), ("MS_NOSUID", 2), ("MS_NODEV", 4), ("MS_NOEXEC", 8), ("MS_SYNCHRONOUS", 16),
            ("MS_REMOUNT", 32), ("MS_MANDLOCK", 64), ("MS_DIRSYNC", 128), ("MS_NOSYMFOLLOW", 256),
            ("MS_NOATIME", 1024), ("MS_NODIRATIME", 2048), ("MS_BIND", 4096), ("MS_MOVE", 8192),
            ("MS_REC", 16384), ("MS_SILENT", 32768), ("MS_POSIXACL", 1 << 16), ("MS_UNBINDABLE", 1 << 17),
            ("MS_PRIVATE", 1 << 18), ("MS_SLAVE", 1 << 19), ("MS_SHARED", 1 << 20), ("MS_RELATIME", 1 << 21),
            ("MS_KERNMOUNT", 1 << 22), ("MS_I_VERSION", 1 << 23), ("MS_STRICTATIME", 1 << 24),
            ("MS_LAZYTIME", 1 << 25), ("MS_ACTIVE", 1 << 30), ("MS_NOUSER", 1 << 31),
        ],
        aliases: [("MS_VERBOSE", 32768)]
    )

    static let umount = FlagVocabulary(
        bitNames: [("MNT_FORCE", 1), ("MNT_DETACH", 2), ("MNT_EXPIRE", 4), ("UMOUNT_NOFOLLOW", 8)]
    )
}

extension FlagKind {
    var vocabulary: FlagVocabulary {
        switch self {
        case .open: FlagVocabulary.open
        case .exec: FlagVocabulary.exec
        case .socketDomain: FlagVocabulary.socketDomain
        case .socketType: FlagVocabulary.socketType
        case .unlinkat: FlagVocabulary.unlinkat
        case .ptraceRequest: FlagVocabulary.ptraceRequest
        case .mount: FlagVocabulary.mount
        case .umount: FlagVocabulary.umount
        }
    }

    /// The symbolic text records print for `value`: names joined with `|`,
    /// unknown bits as `0x...` hex. Zero prints as the name of value 0 where the
    /// vocabulary has one (`O_RDONLY`, `AF_UNSPEC`, `PTRACE_TRACEME`), else `0`.
    public func symbolic(_ value: UInt32) -> String { vocabulary.format(value) }

    /// Parses text ``symbolic(_:)`` prints (and decimal or hex numbers and a few
    /// aliases such as `O_NDELAY`); nil when a token is no name of this kind.
    public func value<S: StringProtocol>(parsing text: S) -> UInt32? { vocabulary.parse(text) }
}

extension StringProtocol {
    /// The text without leading and trailing ASCII spaces and tabs.
    var trimmedForFlags: Substring {
        var slice = self[...]
        while let first = slice.first, first == " " || first == "\t" { slice = slice.dropFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice = slice.dropLast() }
        return Substring(slice)
    }
}
