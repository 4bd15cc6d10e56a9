import Foundation

/// A TCP relay on loopback between a client and a server that can stop
/// passing the server's answers while still passing what the client sends:
/// a network that lost one direction. Publishes then reach the server and
/// are stored while their acks never come back, which is how a resend can
/// arrive long after the first copy was stored.
final class OneWayProxy: @unchecked Sendable {
    let port: Int
    private let target: Int
    private let listener: Int32
    private let lock = NSLock()
    private var answering = true
    private var pairs: [(client: Int32, server: Int32)] = []
    private var stopped = false

    var url: String { "nats://127.0.0.1:\(port)" }

    init(to target: Int) throws {
        self.target = target
        port = NATSTests.freePort()
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard bound, listen(listener, 16) == 0 else {
            close(listener)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    deinit { stop() }

    /// Whether the server's bytes reach the client; when not, they are read and dropped.
    func setAnswering(_ on: Bool) {
        lock.withLock { answering = on }
    }

    /// Closes every relayed connection (the client reconnects through the relay).
    func cutAll() {
        // Under the lock: a relay takes its pair out before it closes the descriptors.
        lock.withLock {
            for pair in pairs {
                shutdown(pair.client, Int32(SHUT_RDWR))
                shutdown(pair.server, Int32(SHUT_RDWR))
            }
        }
    }

    func stop() {
        let first = lock.withLock {
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        cutAll()
    }

    private static func loopback(_ port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        address.sin_port = UInt16(port).bigEndian
        return address
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else {
                if errno == EINTR { continue }
                return
            }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(target)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else {
                close(client)
                close(server)
                continue
            }
            lock.withLock { pairs.append((client, server)) }
            Thread.detachNewThread { [self] in relay(client: client, server: server) }
        }
    }

    /// Copies both ways until either side closes; the server's bytes are
    /// dropped while not answering.
    private func relay(client: Int32, server: Int32) {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: server, events: Int16(POLLIN), revents: 0)]
        loop: while true {
            guard poll(&fds, 2, 1000) >= 0 || errno == EINTR else { break }
            for index in 0..<2 where fds[index].revents != 0 {
                let from = fds[index].fd
                let to = index == 0 ? server : client
                let count = read(from, &buffer, buffer.count)
                if count <= 0 { break loop }
                if index == 1, !lock.withLock({ answering }) { continue }
                var sent = 0
                while sent < count {
                    let written = buffer.withUnsafeBytes { write(to, $0.baseAddress! + sent, count - sent) }
                    if written <= 0 { break loop }
                    sent += written
                }
            }
        }
        lock.withLock { pairs.removeAll { $0.client == client } }
        close(client)
        close(server)
    }
}
