/// Linux errno names, as records print them in `result` and as the `retval`
/// filter's `errno` option accepts them.
///
/// Covers the user-visible numbers 1–133 (x86-64, `asm-generic/errno*.h`) and
/// the kernel-internal 512–531 (`linux/errno.h`), which a kretprobe or exit
/// tracepoint can see before the syscall layer rewrites them. A number with no
/// name prints as `E<n>` (41 and 58 are unused on Linux; 520 has no name).
public enum Errno {
    /// Names indexed by number; empty where the number has no name.
    static let table: [String] = {
        var names = [String](repeating: "", count: 532)
        let user = [
            "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "ENXIO", "E2BIG", "ENOEXEC", "EBADF", "ECHILD",
            "EAGAIN", "ENOMEM", "EACCES", "EFAULT", "ENOTBLK", "EBUSY", "EEXIST", "EXDEV", "ENODEV", "ENOTDIR",
            "EISDIR", "EINVAL", "ENFILE", "EMFILE", "ENOTTY", "ETXTBSY", "EFBIG", "ENOSPC", "ESPIPE", "EROFS",
            "EMLINK", "EPIPE", "EDOM", "ERANGE", "EDEADLK", "ENAMETOOLONG", "ENOLCK", "ENOSYS", "ENOTEMPTY", "ELOOP",
            "", "ENOMSG", "EIDRM", "ECHRNG", "EL2NSYNC", "EL3HLT", "EL3RST", "ELNRNG", "EUNATCH", "ENOCSI",
            "EL2HLT", "EBADE", "EBADR", "EXFULL", "ENOANO", "EBADRQC", "EBADSLT", "", "EBFONT", "ENOSTR",
            "ENODATA", "ETIME", "ENOSR", "ENONET", "ENOPKG", "EREMOTE", "ENOLINK", "EADV", "ESRMNT", "ECOMM",
            "EPROTO", "EMULTIHOP", "EDOTDOT", "EBADMSG", "EOVERFLOW", "ENOTUNIQ", "EBADFD", "EREMCHG", "ELIBACC", "ELIBBAD",
            "ELIBSCN", "ELIBMAX", "ELIBEXEC", "EILSEQ", "ERESTART", "ESTRPIPE", "EUSERS", "ENOTSOCK", "EDESTADDRREQ", "EMSGSIZE",
            "EPROTOTYPE", "ENOPROTOOPT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EOPNOTSUPP", "EPFNOSUPPORT", "EAFNOSUPPORT", "EADDRINUSE", "EADDRNOTAVAIL", "ENETDOWN",
            "ENETUNREACH", "ENETRESET", "ECONNABORTED", "ECONNRESET", "ENOBUFS", "EISCONN", "ENOTCONN", "ESHUTDOWN", "ETOOMANYREFS", "ETIMEDOUT",
            "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EALREADY", "EINPROGRESS", "ESTALE", "EUCLEAN", "ENOTNAM", "ENAVAIL", "EISNAM",
            "EREMOTEIO", "EDQUOT", "ENOMEDIUM", "EMEDIUMTYPE", "ECANCELED", "ENOKEY", "EKEYEXPIRED", "EKEYREVOKED", "EKEYREJECTED", "EOWNERDEAD",
            "ENOTRECOVERABLE", "ERFKILL", "EHWPOISON",
        ]
        for (index, name) in user.enumerated() { names[index + 1] = name }
        let kernel = [
            "ERESTARTSYS", "ERESTARTNOINTR", "ERESTARTNOHAND", "ENOIOCTLCMD", "ERESTART_RESTARTBLOCK",
            "EPROBE_DEFER", "EOPENSTALE", "ENOPARAM", "", "EBADHANDLE", "ENOTSYNC", "EBADCOOKIE", "ENOTSUPP",
            "ETOOSMALL", "ESERVERFAULT", "EBADTYPE", "EJUKEBOX", "EIOCBQUEUED", "ERECALLCONFLICT", "ENOGRACE",
        ]
        for (index, name) in kernel.enumerated() { names[index + 512] = name }
        return names
    }()

    /// Aliases that name the same number as a table entry (accepted, never printed).
    static let aliases: [String: Int32] = ["EWOULDBLOCK": 11, "EDEADLOCK": 35, "ENOTSUP": 95]

    static let byName: [String: Int32] = {
        var map = aliases
        for (number, name) in table.enumerated() where !name.isEmpty { map[name] = Int32(number) }
        return map
    }()

    /// The name of a positive errno number, or `E<n>` when Linux has none.
    public static func name(of number: Int32) -> String {
        if number >= 0, Int(number) < table.count {
            let name = table[Int(number)]
            if !name.isEmpty { return name }
        }
        return "E\(number)"
    }

    /// The number of an errno name; also accepts the aliases `EWOULDBLOCK`,
    /// `EDEADLOCK`, `ENOTSUP` and the `E<n>` form ``name(of:)`` prints. Nil for
    /// anything else.
    public static func number(named name: String) -> Int32? {
        if let number = byName[name] { return number }
        guard name.utf8.count > 1, name.utf8.first == UInt8(ascii: "E") else { return nil }
        let digits = name.dropFirst()
        guard digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let number = Int32(digits) else { return nil }
        return number
    }

    /// Every printed name, ordered by number.
    public static var allNames: [String] { table.filter { !$0.isEmpty } }

    /// The text of `result` for a return value: `ok` when it is not negative,
    /// else the errno name of `-retval`.
    public static func result(of retval: Int64) -> String {
        if retval >= 0 { return "ok" }
        if retval >= -Int64(Int32.max) { return name(of: Int32(-retval)) }
        return "E" + String(retval.magnitude)
    }
}
