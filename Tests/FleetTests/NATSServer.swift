import Foundation
import Testing

/// Whether `nats-server` is here, decided once. Without it the fleet tests
/// skip with the reason printed, unless `PIPELINED_REQUIRE_NATS=1`: then they
/// run and fail on the missing server.
enum NATSTests {
    static let required = ProcessInfo.processInfo.environment["PIPELINED_REQUIRE_NATS"] == "1"

    static let serverPath: String? = {
        for directory in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
            let path = directory + "/nats-server"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }()

    /// The condition of `.enabled(if:)` on every test that starts a server.
    static var enabled: Bool {
        if serverPath != nil || required { return true }
        skipNotice
        return false
    }

    private static let skipNotice: Void = {
        print("skipping the fleet tests: no nats-server (apt-get install nats-server; set PIPELINED_REQUIRE_NATS=1 to fail instead)")
    }()

    /// A loopback TCP port nobody listens on now (bound, read, released).
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                bind(fd, raw, length) == 0 && getsockname(fd, raw, &length) == 0
            }
        }
        precondition(bound, "cannot bind a loopback port: \(String(cString: strerror(errno)))")
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// True once something accepts TCP connections on 127.0.0.1:`port`.
    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    /// An HTTP GET of `path` on 127.0.0.1:`port`: the status code, or nil
    /// when nothing answered. Enough for the server's monitoring endpoint.
    static func httpStatus(port: Int, path: String) -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { return nil }
        let request = "GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = recv(fd, &buffer, buffer.count, 0)
        guard count > 12 else { return nil }
        // "HTTP/1.0 200 OK"
        let head = String(decoding: buffer[0..<count], as: UTF8.self)
        let parts = head.split(separator: " ", maxSplits: 2)
        return parts.count >= 2 ? Int(parts[1]) : nil
    }
}

/// One `nats-server -js` process on loopback ports with its own store
/// directory, as the fleet tests run it. Restartable on the same ports and
/// store (as after a crash); ``stop()`` is idempotent, so a test calls it in
/// a `defer` and the server never outlives the test, failing or not.
final class NATSServer: @unchecked Sendable {
    // Touched only from the test's own task.
    let port: Int
    let monitorPort: Int
    let storeDirectory: String
    let name: String
    /// Cluster: this server's route port and every member's route port.
    let cluster: (port: Int, routes: [Int])?
    /// A configuration file the server reads (`-c`), for what has no flag
    /// (a `tls` block, operator mode); the flags still give ports and store.
    let configPath: String?
    private var process: Process?
    private let logPath: String

    var url: String { "nats://127.0.0.1:\(port)" }

    /// Starts a server and waits until its JetStream is ready; `config` is
    /// the text of a configuration file to add to the flags.
    init(directory: String, name: String = "n1", port: Int? = nil, cluster: (port: Int, routes: [Int])? = nil,
         config: String? = nil, waitReady: Bool = true) throws {
        self.port = port ?? NATSTests.freePort()
        self.monitorPort = NATSTests.freePort()
        self.name = name
        self.cluster = cluster
        storeDirectory = directory + "/store-\(name)"
        logPath = directory + "/nats-\(name).log"
        if let config {
            let path = directory + "/nats-\(name).conf"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            configPath = path
        } else {
            configPath = nil
        }
        try FileManager.default.createDirectory(atPath: storeDirectory, withIntermediateDirectories: true)
        try start(waitReady: waitReady)
    }

    deinit { stop() }

    /// Starts the process (again); with `waitReady`, returns once the server
    /// reports itself healthy (JetStream up; in a cluster, a meta leader).
    func start(waitReady: Bool = true) throws {
        guard let path = NATSTests.serverPath else {
            throw ServerError(description: "nats-server is not installed (apt-get install nats-server)")
        }
        var arguments = ["-js", "-a", "127.0.0.1", "-p", "\(port)", "-m", "\(monitorPort)", "-sd", storeDirectory, "-n", name]
        if let configPath { arguments += ["-c", configPath] }
        if let cluster {
            let routes = cluster.routes.filter { $0 != cluster.port }.map { "nats://127.0.0.1:\($0)" }.joined(separator: ",")
            arguments += ["--cluster_name", "fleet", "--cluster", "nats://127.0.0.1:\(cluster.port)", "--routes", routes]
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        // Appended to across restarts.
        if !FileManager.default.fileExists(atPath: logPath) {
            precondition(FileManager.default.createFile(atPath: logPath, contents: nil), "cannot create \(logPath)")
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        guard waitReady else { return }
        try waitUntilReady()
    }

    /// Waits up to a minute for `/healthz` to answer 200.
    func waitUntilReady(timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if NATSTests.httpStatus(port: monitorPort, path: "/healthz") == 200 { return }
            if let process, !process.isRunning {
                throw ServerError(description: "nats-server \(name) exited (\(process.terminationStatus)): \(log)")
            }
            usleep(50_000)
        }
        throw ServerError(description: "nats-server \(name) not healthy within \(timeout) s: \(log)")
    }

    /// SIGKILL, as a crash: the store is left as the process left it.
    func kill9() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Sends `signal` (SIGSTOP: the server stops answering but keeps its
    /// connections; SIGCONT: it goes on).
    func signal(_ signal: Int32) {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, signal)
    }

    /// SIGTERM, then SIGKILL after 10 s; returns once the process is gone.
    func stop() {
        guard let process else { return }
        self.process = nil
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// The server's log so far (its last 4000 characters).
    var log: String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return String(text.suffix(4000))
    }

    struct ServerError: Error, CustomStringConvertible {
        var description: String
    }
}

/// Three JetStream servers routed to each other on loopback ports.
final class NATSCluster: @unchecked Sendable {
    let servers: [NATSServer]

    init(directory: String, size: Int = 3) throws {
        let routes = (0..<size).map { _ in NATSTests.freePort() }
        var servers: [NATSServer] = []
        for index in 0..<size {
            // Every member must be up before any is healthy (a meta leader needs a quorum).
            servers.append(try NATSServer(directory: directory, name: "c\(index + 1)", cluster: (routes[index], routes), waitReady: false))
        }
        self.servers = servers
        for server in servers { try server.waitUntilReady() }
    }

    /// Every member's client url, for a `url` list.
    var urls: [String] { servers.map(\.url) }

    func stop() { servers.forEach { $0.stop() } }
}
