import Foundation

/// What a fleet test needs to make a server require TLS or credentials,
/// made here rather than by hand: certificates with the `openssl` CLI, and
/// NATS operator, account and user keys and JWTs (there is no `nsc`).
enum NATSAuth {
    struct ToolError: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs `openssl` with `arguments`, `input` on its stdin; its stdout.
    @discardableResult
    static func openssl(_ arguments: [String], input: Data = Data()) throws -> Data {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        stdin.fileHandleForWriting.write(input)
        try stdin.fileHandleForWriting.close()
        // Small outputs (keys, certificates): reading to the end cannot block the child.
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        let errors = stderr.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ToolError(description: "openssl \(arguments.joined(separator: " ")): \(String(decoding: errors, as: UTF8.self))")
        }
        return output
    }
}

// MARK: TLS

extension NATSAuth {
    /// A certificate authority, a server certificate for 127.0.0.1 and a
    /// client certificate, as PEM files in `directory`.
    struct Certificates {
        let ca: String
        let serverCert: String
        let serverKey: String
        let clientCert: String
        let clientKey: String

        init(in directory: String, name: String = "test") throws {
            func path(_ file: String) -> String { directory + "/\(name)-\(file)" }
            ca = path("ca.pem")
            serverCert = path("server.pem")
            serverKey = path("server.key")
            clientCert = path("client.pem")
            clientKey = path("client.key")
            let caKey = path("ca.key")
            let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            try openssl(["req", "-x509"] + curve + ["-keyout", caKey, "-out", ca, "-days", "2", "-subj", "/CN=pipelined \(name) CA"])
            for (cert, key, subject, usage) in [
                (serverCert, serverKey, "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                (clientCert, clientKey, "/CN=pipelined node", "extendedKeyUsage=clientAuth\n"),
            ] {
                let request = cert + ".csr", extensions = cert + ".ext"
                try usage.write(toFile: extensions, atomically: true, encoding: .utf8)
                try openssl(["req"] + curve + ["-keyout", key, "-out", request, "-subj", subject])
                try openssl(["x509", "-req", "-in", request, "-CA", ca, "-CAkey", caKey, "-set_serial", "\(Int.random(in: 1..<Int(Int32.max)))",
                             "-out", cert, "-days", "2", "-extfile", extensions])
            }
        }

        /// The server's `tls` block: it requires (and verifies) a client certificate.
        var serverConfig: String {
            """
            tls {
              cert_file: "\(serverCert)"
              key_file: "\(serverKey)"
              ca_file: "\(ca)"
              verify: true
              timeout: 5
            }
            """
        }
    }
}

// MARK: NKeys and JWTs

extension NATSAuth {
    /// An ed25519 NKey (operator, account or user): its seed and public key in
    /// the NKey text forms (`SO…`/`O…`, `SA…`/`A…`, `SU…`/`U…`).
    struct NKey {
        enum Kind: UInt8 {
            // The NKey prefix bytes: the base32 letter's index, shifted into the top 5 bits.
            case operator_ = 112  // 'O' (14 << 3)
            case account = 0  // 'A'
            case user = 160  // 'U' (20 << 3)
        }

        static let seedPrefix: UInt8 = 144  // 'S' (18 << 3)

        let kind: Kind
        let seed: String
        let publicKey: String
        /// The key as openssl holds it (PKCS #8 DER), for signing.
        private let privateDER: Data

        /// A new key pair, drawn by `openssl genpkey`; the raw seed and public
        /// key are the last 32 bytes of their DER forms.
        init(_ kind: Kind) throws {
            self.kind = kind
            let privateDER = try openssl(["genpkey", "-algorithm", "ed25519", "-outform", "DER"])
            let publicDER = try openssl(["pkey", "-inform", "DER", "-pubout", "-outform", "DER"], input: privateDER)
            guard privateDER.count >= 32, publicDER.count >= 32 else { throw ToolError(description: "openssl gave no ed25519 key") }
            self.privateDER = privateDER
            let rawSeed = [UInt8](privateDER.suffix(32)), rawPublic = [UInt8](publicDER.suffix(32))
            seed = NKey.encode([NKey.seedPrefix | (kind.rawValue >> 5), (kind.rawValue & 31) << 3] + rawSeed)
            publicKey = NKey.encode([kind.rawValue] + rawPublic)
        }

        /// base32 (no padding) of `bytes` and their CRC16.
        static func encode(_ bytes: [UInt8]) -> String {
            let crc = crc16(bytes)
            return base32(bytes + [UInt8(crc & 0xff), UInt8(crc >> 8)])
        }

        /// Signs `text` with the key (`openssl pkeyutl -sign -rawin`: plain
        /// ed25519, as NKeys sign). Not with the C client's `nats_Sign`,
        /// which takes user, account and server seeds but not an operator's.
        func sign(_ text: String) throws -> [UInt8] {
            // One-shot ed25519 signing wants files, not pipes, for key and input.
            let base = NSTemporaryDirectory() + "nkey-\(UUID().uuidString)"
            let keyFile = base + ".der", inputFile = base + ".in"
            defer {
                try? FileManager.default.removeItem(atPath: keyFile)
                try? FileManager.default.removeItem(atPath: inputFile)
            }
            guard FileManager.default.createFile(atPath: keyFile, contents: privateDER, attributes: [.posixPermissions: 0o600]),
                  FileManager.default.createFile(atPath: inputFile, contents: Data(text.utf8)) else {
                throw ToolError(description: "cannot write \(base).*")
            }
            return [UInt8](try openssl(["pkeyutl", "-sign", "-rawin", "-inkey", keyFile, "-keyform", "DER", "-in", inputFile]))
        }
    }

    /// CRC-16/XMODEM, as NKeys check their text forms.
    static func crc16(_ bytes: [UInt8]) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    /// RFC 4648 base32, without padding.
    static func base32(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        var text = "", buffer: UInt32 = 0, bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                text.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { text.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return text
    }

    static func base64url(_ bytes: some Collection<UInt8>) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// A NATS JWT (version 2) for `subject`, issued and signed by `issuer`;
    /// `nats` is the claims' `nats` object without `type` and `version`.
    static func jwt(subject: NKey, issuer: NKey, name: String, nats: [String: Any]) throws -> String {
        let type = switch subject.kind {
        case .operator_: "operator"
        case .account: "account"
        case .user: "user"
        }
        var natsClaims = nats
        natsClaims["type"] = type
        natsClaims["version"] = 2
        var claims: [String: Any] = [
            "iat": Int(Date().timeIntervalSince1970), "iss": issuer.publicKey, "sub": subject.publicKey, "name": name, "nats": natsClaims,
        ]
        // The id is the hash of the claims without it, as the NATS tools make it.
        let unnamed = try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys])
        claims["jti"] = base32([UInt8](try openssl(["dgst", "-sha256", "-binary"], input: unnamed)))
        let header = base64url(Array(#"{"typ":"JWT","alg":"ed25519-nkey"}"#.utf8))
        let body = base64url(try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys]))
        let signed = header + "." + body
        return signed + "." + base64url(try issuer.sign(signed))
    }

    /// An operator with a system account and one account (`fleet`) that may
    /// use JetStream without limits, and a user of that account: what a
    /// server in operator mode with a memory resolver needs, and the user's
    /// `.creds` file.
    struct Operator {
        let operatorJWT: String
        let systemAccount: NKey
        let systemJWT: String
        let account: NKey
        let accountJWT: String
        let userJWT: String
        let user: NKey

        init() throws {
            let operatorKey = try NKey(.operator_)
            systemAccount = try NKey(.account)
            account = try NKey(.account)
            user = try NKey(.user)
            operatorJWT = try NATSAuth.jwt(subject: operatorKey, issuer: operatorKey, name: "pipelined-test", nats: ["system_account": systemAccount.publicKey])
            let unlimited: [String: Any] = ["subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1]
            systemJWT = try NATSAuth.jwt(subject: systemAccount, issuer: operatorKey, name: "SYS", nats: ["limits": unlimited])
            var jetStream = unlimited
            for key in ["mem_storage", "disk_storage", "streams", "consumer"] { jetStream[key] = -1 }
            accountJWT = try NATSAuth.jwt(subject: account, issuer: operatorKey, name: "fleet", nats: ["limits": jetStream])
            userJWT = try NATSAuth.jwt(subject: user, issuer: account, name: "node", nats: ["pub": [String: Any](), "sub": [String: Any](), "subs": -1, "data": -1, "payload": -1])
        }

        /// The server's operator-mode configuration.
        var serverConfig: String {
            """
            operator: \(operatorJWT)
            system_account: \(systemAccount.publicKey)
            resolver: MEMORY
            resolver_preload: {
              \(systemAccount.publicKey): \(systemJWT)
              \(account.publicKey): \(accountJWT)
            }
            """
        }

        /// The user's credentials file, as `nsc` writes it.
        var creds: String {
            """
            -----BEGIN NATS USER JWT-----
            \(userJWT)
            ------END NATS USER JWT------

            ************************* IMPORTANT *************************
            NKEY Seed printed below can be used to sign and prove identity.
            NKEYs are sensitive and should be treated as secrets.

            -----BEGIN USER NKEY SEED-----
            \(user.seed)
            ------END USER NKEY SEED------

            *************************************************************

            """
        }
    }
}
