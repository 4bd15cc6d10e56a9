#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A pthread mutex with a condition variable: what the runtime's queues and
/// thread joins wait on. Blocking waits happen only on the runtime's own
/// threads, never on Swift's cooperative pool.
///
/// `@unchecked Sendable`: all access to the pthread objects goes through
/// `pthread_mutex_*` / `pthread_cond_*`, which are thread-safe by contract, and
/// the pointers never change after init.
public final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if !canImport(Darwin)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        #endif
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Runs `body` holding the lock.
    @inlinable
    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    @usableFromInline func lock() { pthread_mutex_lock(mutex) }
    @usableFromInline func unlock() { pthread_mutex_unlock(mutex) }

    /// Waits for a signal; the lock must be held. Spurious wake-ups happen:
    /// callers re-check their condition in a loop.
    public func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits for a signal or until the monotonic deadline; the lock must be held.
    /// Returns false on time-out.
    @discardableResult
    public func wait(untilMonotonicNs deadline: Int64) -> Bool {
        #if canImport(Darwin)
        let remaining = max(0, deadline - Clock.monotonicNs())
        var spec = timespec(tv_sec: Int(remaining / 1_000_000_000), tv_nsec: Int(remaining % 1_000_000_000))
        return pthread_cond_timedwait_relative_np(condition, mutex, &spec) == 0
        #else
        var spec = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(condition, mutex, &spec) == 0
        #endif
    }

    /// Wakes every waiter.
    public func broadcast() { pthread_cond_broadcast(condition) }
}

/// A thread of the runtime's own, joinable.
public final class RuntimeThread: Sendable {
    private let done = ConditionLock()
    private nonisolated(unsafe) var finished = false  // guarded by `done`

    /// Starts `body` on a new thread; `name` says what it is for.
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(ThreadStart(name: name) { [done] in
            body()
            done.withLock { self.markFinished() }
            done.broadcast()
        })
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { raw in
            let start = Unmanaged<ThreadStart>.fromOpaque(raw!).takeRetainedValue()
            start.body()
            return nil
        }, box.toOpaque())
        precondition(result == 0, "pthread_create failed: \(result)")
        pthread_detach(thread)
    }

    private func markFinished() { finished = true }

    /// Waits until the body has returned, or the deadline passes; true if it returned.
    @discardableResult
    public func join(untilMonotonicNs deadline: Int64 = .max) -> Bool {
        done.withLock {
            while !finished {
                if deadline == .max { done.wait() } else if !done.wait(untilMonotonicNs: deadline) { return finished }
            }
            return true
        }
    }
}

private final class ThreadStart: Sendable {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}
