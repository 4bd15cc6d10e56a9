#if canImport(Glibc)
import Glibc
#endif

/// The account `settings.user` and `settings.group` name, looked up when the
/// file is loaded (an unknown user or group is a pipeline file error, as
/// `validate` reports it). The command line switches to it once the pipeline
/// runs; the core only carries it.
public struct RunAsIdentity: Sendable, Equatable, CustomStringConvertible {
    public var user: String
    public var uid: UInt32
    public var group: String
    public var gid: UInt32

    public init(user: String, uid: UInt32, group: String, gid: UInt32) {
        self.user = user
        self.uid = uid
        self.group = group
        self.gid = gid
    }

    /// `nobody (65534) / nogroup (65534)`.
    public var description: String { "\(user) (\(uid)) / \(group) (\(gid))" }

    /// A user of the passwd database by name or number: its name, uid and primary gid.
    static func lookUpUser(_ text: String) -> (name: String, uid: UInt32, gid: UInt32)? {
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        if getpwnam_r(text, &entry, &buffer, buffer.count, &found) == 0, found != nil {
            return (String(cString: entry.pw_name), entry.pw_uid, entry.pw_gid)
        }
        if let number = UInt32(text), getpwuid_r(number, &entry, &buffer, buffer.count, &found) == 0, found != nil {
            return (String(cString: entry.pw_name), entry.pw_uid, entry.pw_gid)
        }
        return nil
    }

    /// A group of the group database by name or number.
    static func lookUpGroup(_ text: String) -> (name: String, gid: UInt32)? {
        var entry = Glibc.group()
        var found: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 65_536)
        if getgrnam_r(text, &entry, &buffer, buffer.count, &found) == 0, found != nil {
            return (String(cString: entry.gr_name), entry.gr_gid)
        }
        if let number = UInt32(text), getgrgid_r(number, &entry, &buffer, buffer.count, &found) == 0, found != nil {
            return (String(cString: entry.gr_name), entry.gr_gid)
        }
        return nil
    }
}

/// `settings.seccomp`: what the allow-list installed after the privilege
/// drop does with a syscall it does not list.
public enum SeccompMode: String, Sendable, Equatable, CaseIterable {
    /// No filter.
    case off
    /// The call goes ahead and the kernel logs it (SECCOMP_RET_LOG).
    case log
    /// The process is killed (SECCOMP_RET_KILL_PROCESS).
    case kill
}

extension LoadSession {
    /// `settings.drop_privileges`, `settings.user`, `settings.group`: read
    /// together once the other settings are, so that each can be checked
    /// against the others.
    mutating func readPrivilegeSettings(drop: ConfigEntry?, user: ConfigEntry?, group: ConfigEntry?, seccomp: ConfigEntry?, into settings: inout PipelineSettings) {
        if let seccomp {
            if let text = seccomp.value.scalarText, let mode = SeccompMode(rawValue: text.lowercased()) {
                settings.seccomp = mode
            } else {
                error(seccomp.value.location, "settings: 'seccomp' must be off, log or kill, not \(seccomp.value.scalarText.map { "'\($0)'" } ?? seccomp.value.kindDescription)")
            }
        }
        if let drop {
            switch drop.value.scalarText?.lowercased() {
            case "true", "yes", "on": settings.dropPrivileges = true
            case "false", "no", "off": settings.dropPrivileges = false
            default:
                error(drop.value.location, "settings: 'drop_privileges' must be true or false, not \(drop.value.scalarText.map { "'\($0)'" } ?? drop.value.kindDescription)")
            }
        }
        if settings.seccomp != .off, !settings.dropPrivileges, let seccomp {
            error(seccomp.keyLocation, "settings: 'seccomp' needs drop_privileges: true (the filter is installed after the drop)")
        }
        guard let user else {
            if let group { error(group.keyLocation, "settings: 'group' needs 'user' (the group is switched to with the user)") }
            return
        }
        guard let userText = user.value.scalarText, !userText.isEmpty else {
            error(user.value.location, "settings: 'user' must be a user name or uid, not \(user.value.kindDescription)")
            return
        }
        if !settings.dropPrivileges {
            error(user.keyLocation, "settings: 'user' needs drop_privileges: true (the user is switched to when privileges are dropped)")
        }
        guard let account = RunAsIdentity.lookUpUser(userText) else {
            error(user.value.location, "settings: 'user': no such user '\(userText)' on this machine")
            return
        }
        var identity = RunAsIdentity(user: account.name, uid: account.uid, group: "\(account.gid)", gid: account.gid)
        if let group {
            guard let groupText = group.value.scalarText, !groupText.isEmpty, let found = RunAsIdentity.lookUpGroup(groupText) else {
                error(group.value.location, "settings: 'group': no such group \(group.value.scalarText.map { "'\($0)'" } ?? group.value.kindDescription) on this machine")
                return
            }
            (identity.group, identity.gid) = found
        } else if let primary = RunAsIdentity.lookUpGroup("\(account.gid)") {
            identity.group = primary.name
        }
        settings.runAs = identity
    }
}
