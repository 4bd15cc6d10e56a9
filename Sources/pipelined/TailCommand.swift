import ArgumentParser
import EventSinks
#if canImport(Glibc)
import Glibc
#endif

/// `pipelined tail SOCKET`: prints every event line a `unix_socket` sink
/// serves, until the sink closes the connection or SIGINT/SIGTERM (exit 0).
///
/// Lines are written to standard output as they arrive, whole lines only,
/// with no buffering in between. A missing socket, a path that is not a
/// socket, permission denied, nothing serving, or a refusal (the sink closed
/// the connection before sending a byte, as it does to a uid that is not in
/// its `allow_uids`) is a one-line message on stderr and exit status 1.
struct TailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tail",
        abstract: "Print every event line that a unix_socket sink serves, until it closes or SIGINT."
    )

    @Argument(help: "The unix_socket sink's path.")
    var socket: String

    func run() throws {
        let fd = try connectToSink()
        defer { Glibc.close(fd) }
        let interrupted = try SignalPipe.install([SIGINT, SIGTERM])
        switch stream(from: fd, interrupted: interrupted) {
        case .finished, .interrupted:
            return
        case .refused:
            throw fail("'\(socket)' closed the connection before sending anything: the sink refused this client (is uid \(geteuid()) in its allow_uids?)")
        case .readFailed(let code):
            throw fail("reading '\(socket)' failed: \(String(cString: strerror(code)))")
        }
    }

    private func connectToSink() throws -> Int32 {
        var info = stat()
        if stat(socket, &info) != 0 {
            let code = errno
            if code == ENOENT || code == ENOTDIR {
                throw fail("no socket at '\(socket)': is the pipeline running, and is this its unix_socket sink's path?")
            }
            if code == EACCES { throw fail("permission denied: cannot reach '\(socket)'") }
            throw fail("cannot use '\(socket)': \(String(cString: strerror(code)))")
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw fail("'\(socket)' is not a socket")
        }
        switch UnixSocketPath.connect(socket) {
        case .success(let fd):
            return fd
        case .failure(let error) where error.errno == EACCES || error.errno == EPERM:
            throw fail("permission denied connecting to '\(socket)': its mode does not let uid \(geteuid()) in")
        case .failure(let error) where error.errno == ECONNREFUSED:
            throw fail("nothing is serving on '\(socket)' (connection refused): a stale socket file?")
        case .failure(let error) where error.errno == ENAMETOOLONG:
            throw fail("'\(socket)' is too long for a unix socket path (at most 107 bytes)")
        case .failure(let error):
            throw fail("cannot connect to '\(socket)': \(error.reason)")
        }
    }

    private enum End {
        case finished, interrupted, refused
        case readFailed(Int32)
    }

    /// Copies whole lines from the socket to standard output until end of
    /// stream or a signal.
    private func stream(from fd: Int32, interrupted: Int32) -> End {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var pending: [UInt8] = []
        var received = 0
        var fds = [
            pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: interrupted, events: Int16(POLLIN), revents: 0),
        ]
        while true {
            fds[0].revents = 0
            fds[1].revents = 0
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                return .readFailed(errno)
            }
            if fds[1].revents != 0 { return .interrupted }
            guard fds[0].revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == ECONNRESET { return received == 0 ? .refused : .finished }
                return .readFailed(errno)
            }
            if count == 0 {
                // The sink closed: a partial last line is still printed.
                if !pending.isEmpty { writeOut(pending[...]) }
                return received == 0 ? .refused : .finished
            }
            received += count
            // Print up to the last newline; keep a partial line for the next read.
            let chunk = buffer[0..<count]
            if let lastNewline = chunk.lastIndex(of: UInt8(ascii: "\n")) {
                if pending.isEmpty {
                    writeOut(chunk[...lastNewline])
                } else {
                    pending.append(contentsOf: chunk[...lastNewline])
                    writeOut(pending[...])
                    pending.removeAll(keepingCapacity: true)
                }
                pending.append(contentsOf: chunk[(lastNewline + 1)...])
            } else {
                pending.append(contentsOf: chunk)
            }
        }
    }

    private func writeOut(_ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(STDOUT_FILENO, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    // Standard output is gone (a closed pipe): nothing more to do.
                    Glibc.exit(ExitStatus.success)
                }
                offset += written
            }
        }
    }

    private func fail(_ message: String) -> ExitCode {
        FileHandleStderr.write("pipelined tail: \(message)\n")
        return ExitCode(ExitStatus.failure)
    }
}

/// The write end of a pipe that a signal handler writes a byte to, so that
/// `poll` wakes up without races (a signal that arrives while we write to
/// stdout is still seen at the next `poll`).
// Written once, before the handlers are installed; read by the handler.
private nonisolated(unsafe) var signalPipeWriteEnd: Int32 = -1

enum SignalPipe {
    /// Installs handlers for `signals`; returns the pipe's read end.
    static func install(_ signals: [Int32]) throws -> Int32 {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw ExitCode(ExitStatus.failure) }
        for end in ends {
            // Non-blocking: a handler must never wait on a full pipe.
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        signalPipeWriteEnd = ends[1]
        for signal in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in
                var byte: UInt8 = 1
                _ = Glibc.write(signalPipeWriteEnd, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            sigaction(signal, &action, nil)
        }
        // A parent may have started us with these signals blocked (a blocked
        // mask survives exec); unblock them so that Ctrl-C still ends tail.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for signal in signals { sigaddset(&unblock, signal) }
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        return ends[0]
    }
}
