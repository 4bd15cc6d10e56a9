#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CNATS
import PipelineCore

/// Where a nats stage connects and how it proves who it is: the options the
/// `nats` source and sink share (`url`, `credentials`, `tls`).
///
/// Files named here are checked when the pipeline is validated (they must be
/// readable), so a wrong path is a located pipeline error (exit 78), not a
/// failure at the first connect. Their locations are kept for errors that
/// only the C client can find when it loads them.
public struct NATSEndpoint: Sendable, Equatable {
    /// Servers, tried in order; the client reconnects to any of them.
    public var urls: [String]
    /// A NATS credentials file (user JWT and NKey seed), if any.
    public var credentials: String?
    /// TLS files; nil for a plain connection (unless a url is `tls://`).
    public var tls: TLSFiles?
    /// Where `credentials` and `tls` are written, for errors found at connect.
    public var credentialsLocation: SourceLocation?
    public var tlsLocation: SourceLocation?

    /// The `tls` map: `ca` (trusted roots), and `cert` with `key` (the client's own).
    public struct TLSFiles: Sendable, Equatable {
        public var ca: String?
        public var cert: String?
        public var key: String?

        public init(ca: String? = nil, cert: String? = nil, key: String? = nil) {
            self.ca = ca
            self.cert = cert
            self.key = key
        }
    }

    public static let defaultURL = "nats://127.0.0.1:4222"

    public init(urls: [String] = [NATSEndpoint.defaultURL], credentials: String? = nil, tls: TLSFiles? = nil) {
        self.urls = urls
        self.credentials = credentials
        self.tls = tls
    }

    /// The options as `pipelined plugins` lists them.
    public static let specs: [OptionSpec] = [
        OptionSpec("url", "string|[string]", default: defaultURL, "nats server url, or a list of them (nats:// or tls://)"),
        OptionSpec("credentials", "string", "a NATS credentials file (user JWT and seed)"),
        OptionSpec("tls", "map", "TLS files: ca (trusted roots), cert and key (client certificate)"),
    ]

    /// Reads `url`, `credentials` and `tls`; nil after reporting a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        var urls = [NATSEndpoint.defaultURL]
        if let value = config.value("url") {
            let list: [(text: String, location: SourceLocation)]?
            if case .scalar(let text, _, let at) = value {
                list = [(text, at)]
            } else {
                list = config.scalarList("url")
            }
            if let list {
                if list.isEmpty { config.error("url", "must name at least one server") }
                for item in list where !NATSEndpoint.isURL(item.text) {
                    config.error(at: item.location, "'url' must be nats://HOST:PORT or tls://HOST:PORT, not '\(item.text)'")
                }
                urls = list.map(\.text)
            }
        }
        self.init(urls: urls)
        if let path = config.string("credentials") {
            credentials = path
            credentialsLocation = config.value("credentials")?.location
            if let problem = NATSEndpoint.unreadable(path) ?? NATSEndpoint.credentialsProblem(path) {
                config.error("credentials", problem)
            }
        }
        if let entries = config.scalarMap("tls") {
            var files = TLSFiles()
            for entry in entries {
                switch entry.key {
                case "ca": files.ca = entry.text
                case "cert": files.cert = entry.text
                case "key": files.key = entry.text
                default:
                    var message = "unknown key 'tls.\(entry.key)' (ca, cert, key)"
                    if let guess = closestMatch(to: entry.key, in: ["ca", "cert", "key"]) { message += " (did you mean '\(guess)'?)" }
                    config.error(at: entry.keyLocation, message)
                    continue
                }
                if let problem = NATSEndpoint.unreadable(entry.text) {
                    config.error(at: entry.location, "'tls.\(entry.key)' \(problem)")
                }
            }
            if (files.cert == nil) != (files.key == nil) {
                config.error("tls", "needs both 'cert' and 'key' (a client certificate and its key), or neither")
            } else if config.diagnostics.count == errors, let problem = NATSEndpoint.tlsProblem(files) {
                let at = entries.first { $0.key == problem.key }?.location
                if let at { config.error(at: at, problem.message) } else { config.error("tls", problem.message) }
            }
            tls = files
            tlsLocation = config.value("tls")?.location
        }
        guard config.diagnostics.count == errors else { return nil }
    }

    /// `nats://HOST:PORT` or `tls://HOST:PORT` (user info allowed, as the C client takes it).
    static func isURL(_ text: String) -> Bool {
        for scheme in ["nats://", "tls://"] where text.hasPrefix(scheme) {
            return text.count > scheme.count
        }
        return false
    }

    /// Why `path` cannot be read, or nil when it can.
    static func unreadable(_ path: String) -> String? {
        if path.isEmpty { return "must not be empty" }
        var info = stat()
        guard stat(path, &info) == 0 else { return "cannot read '\(path)': \(String(cString: strerror(errno)))" }
        if (info.st_mode & S_IFMT) == S_IFDIR { return "cannot read '\(path)': it is a directory" }
        guard access(path, R_OK) == 0 else { return "cannot read '\(path)': \(String(cString: strerror(errno)))" }
        return nil
    }

    /// Why the file at `path` is not a NATS credentials file, or nil when it
    /// is one: a user JWT block, then a user NKey seed block, as
    /// `nsc generate creds` writes them and the C client reads them (the
    /// lines between one `---` line and the next). The C client reads the
    /// file only when it connects; checked here, a wrong file is a located
    /// error at validation rather than a failed start.
    static func credentialsProblem(_ path: String) -> String? {
        guard let text = readSmallFile(path) else { return "cannot read '\(path)': \(String(cString: strerror(errno)))" }
        var blocks: [String] = []
        var block: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = line.filter { $0 != " " && $0 != "\t" && $0 != "\r" }
            if line.hasPrefix("---") {
                if let content = block { blocks.append(content) }
                block = block == nil ? "" : nil
            } else if block != nil, !line.isEmpty {
                block! += line
            }
        }
        let format = "a NATS credentials file holds a '-----BEGIN NATS USER JWT-----' block, then a '-----BEGIN USER NKEY SEED-----' block, as `nsc generate creds` writes them"
        guard let jwt = blocks.first, jwt.split(separator: ".", omittingEmptySubsequences: false).count == 3 else {
            return "'\(path)' holds no user JWT (\(format))"
        }
        guard blocks.count >= 2, blocks[1].hasPrefix("SU"), blocks[1].allSatisfy({ $0.isUppercase || ("2"..."7").contains($0) }) else {
            return "'\(path)' holds no user NKey seed (SU…) after its JWT (\(format))"
        }
        return nil
    }

    /// Why the C client cannot load the TLS files, and which key names the
    /// file, or nil when it can: loaded once into options that are thrown
    /// away, so a file that is not PEM, or a key that is not the
    /// certificate's, is found at validation.
    static func tlsProblem(_ files: TLSFiles) -> (key: String, message: String)? {
        var options: OpaquePointer?
        guard natsOptions_Create(&options) == NATS_OK else { return nil }
        defer { natsOptions_Destroy(options) }
        if let ca = files.ca {
            let status = natsOptions_LoadCATrustedCertificates(options, ca)
            if status != NATS_OK { return ("ca", "'tls.ca' '\(ca)' is not a PEM file of CA certificates: \(NATSError.lastDetail(status))") }
        }
        if let cert = files.cert, let key = files.key {
            let status = natsOptions_LoadCertificatesChain(options, cert, key)
            if status != NATS_OK {
                let detail = NATSError.lastDetail(status)
                let which = detail.contains("private key") ? "key" : "cert"
                return (which, "'tls.cert' '\(cert)' and 'tls.key' '\(key)' are not a PEM certificate and its private key: \(detail)")
            }
        }
        return nil
    }

    /// A file of at most 1 MiB as text (a credentials file is a few KiB), or
    /// nil with `errno` set.
    private static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while bytes.count < 1 << 20 {
            let count = read(fd, &chunk, chunk.count)
            if count < 0 { return nil }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Why `name` cannot name a JetStream stream or consumer (white space,
    /// `.`, `*`, `>`, `/`, `\\` are not allowed), or nil when it can.
    public static func plainNameProblem(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if let bad = name.first(where: { " \t\r\n.*>/\\".contains($0) }) {
            return "must not contain '\(bad == " " ? "space" : String(bad))' (a JetStream name is one plain word such as PIPELINED)"
        }
        return nil
    }

    /// What a failed ``NATSConnection/connect(_:name:onEvent:)`` means for
    /// the stage `label` (`sink 'fleet'`): with credentials or TLS files the
    /// client or the server rejected, a pipeline error located at them
    /// (exit 78: at `tls` for a TLS failure, at `credentials` for others,
    /// such as an authorization violation); otherwise a runtime failure.
    public func startError(_ error: NATSError, stage: String, label: String) -> StageStartError {
        // A failed handshake, or a server that hung up in it (no client
        // certificate), is about `tls`; anything else first about `credentials`.
        let aboutTLS = error.status == NATS_SSL_ERROR || (error.status == NATS_PROTOCOL_ERROR && tls != nil)
        guard let location = aboutTLS ? tlsLocation ?? credentialsLocation : credentialsLocation ?? tlsLocation else {
            return StageStartError(stage: stage, message: "\(error)")
        }
        return StageStartError(stage: stage, message: "\(label): \(error)", exitCode: 78, location: location)
    }

    /// The urls joined for messages, their passwords and tokens hidden.
    public var urlList: String { urls.map(Self.redacted).joined(separator: ", ") }

    /// `url` as it may be logged: `nats://user:secret@host:4222` becomes
    /// `nats://user:***@host:4222`, and a token (`nats://secret@host`)
    /// `nats://***@host`.
    public static func redacted(_ url: String) -> String {
        guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].lastIndex(of: "@") else { return url }
        let userInfo = url[scheme.upperBound..<at]
        let shown = userInfo.firstIndex(of: ":").map { userInfo[..<$0] + ":***" } ?? "***"
        return url[..<scheme.upperBound] + shown + url[at...]
    }
}
