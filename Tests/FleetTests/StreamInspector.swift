import CNATS
import Foundation
import NATSClient

/// Reads a JetStream stream from the test's side, through the same C
/// client: how many messages it holds and every one of them, so a test can
/// say what reached the stream (not only what an aggregator wrote).
final class StreamInspector {
    let connection: NATSConnection
    let jetStream: OpaquePointer

    convenience init(urls: [String]) throws {
        try self.init(endpoint: NATSEndpoint(urls: urls))
    }

    /// Connects as `endpoint` says (with its credentials and TLS files, for
    /// a server that requires them).
    init(endpoint: NATSEndpoint) throws {
        let (connection, connected) = try NATSConnection.connect(endpoint, name: "fleet-test") { _ in }
        self.connection = connection
        if !connected {
            let deadline = Date().addingTimeInterval(30)
            while !connection.isConnected, Date() < deadline { usleep(20_000) }
        }
        jetStream = try connection.jetStream()
    }

    deinit {
        jsCtx_Destroy(jetStream)
        connection.close()
    }

    /// The stream's message count, or nil when it does not exist (yet) or
    /// does not answer; retried up to `timeout` seconds (a cluster may be
    /// electing a leader).
    func messageCount(_ stream: String, timeout: Double = 30) -> UInt64? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            var info: UnsafeMutablePointer<jsStreamInfo>?
            var code = jsErrCode(rawValue: 0)
            if js_GetStreamInfo(&info, jetStream, stream, nil, &code) == NATS_OK, let info {
                defer { jsStreamInfo_Destroy(info) }
                return info.pointee.State.Msgs
            }
            usleep(100_000)
        } while Date() < deadline
        return nil
    }

    /// Waits until the stream holds at least `count` messages (up to
    /// `timeout` seconds); returns the last count seen.
    @discardableResult
    func waitForMessages(_ stream: String, atLeast count: UInt64, timeout: Double = 120) -> UInt64 {
        let deadline = Date().addingTimeInterval(timeout)
        var seen: UInt64 = 0
        while Date() < deadline {
            seen = messageCount(stream, timeout: 5) ?? seen
            if seen >= count { return seen }
            usleep(100_000)
        }
        return seen
    }

    /// Waits until the count stops changing for `quiet` seconds.
    func settledCount(_ stream: String, quiet: Double = 2, timeout: Double = 120) -> UInt64 {
        let deadline = Date().addingTimeInterval(timeout)
        var last = messageCount(stream) ?? 0
        var since = Date()
        while Date() < deadline {
            usleep(250_000)
            let now = messageCount(stream, timeout: 5) ?? last
            if now != last {
                last = now
                since = Date()
            } else if Date().timeIntervalSince(since) >= quiet {
                break
            }
        }
        return last
    }

    /// Creates a stream as another user of the server might have.
    func addStream(_ name: String, subjects: [String]) throws {
        var config = jsStreamConfig()
        jsStreamConfig_Init(&config)
        let cName = strdup(name)
        let cSubjects = subjects.map { strdup($0) }
        defer {
            free(cName)
            cSubjects.forEach { free($0) }
        }
        var list: [UnsafePointer<CChar>?] = cSubjects.map { UnsafePointer($0) }
        var info: UnsafeMutablePointer<jsStreamInfo>?
        var code = jsErrCode(rawValue: 0)
        let status = list.withUnsafeMutableBufferPointer { pointers in
            config.Name = UnsafePointer(cName)
            config.Subjects = pointers.baseAddress
            config.SubjectsLen = Int32(pointers.count)
            return js_AddStream(&info, jetStream, &config, nil, &code)
        }
        try natsCheck(status, code: code, "cannot create stream \(name)")
        jsStreamInfo_Destroy(info)
    }

    /// A durable consumer's progress, as the server counts it.
    struct ConsumerState {
        /// The stream sequence of the last message delivered.
        var deliveredStream: UInt64
        /// Every message up to this stream sequence is acknowledged.
        var ackFloorStream: UInt64
        var ackPending: Int64
        /// Messages not delivered yet.
        var pending: UInt64
        var redelivered: Int64
    }

    func consumer(_ stream: String, _ durable: String) -> ConsumerState? {
        var info: UnsafeMutablePointer<jsConsumerInfo>?
        var code = jsErrCode(rawValue: 0)
        guard js_GetConsumerInfo(&info, jetStream, stream, durable, nil, &code) == NATS_OK, let info else { return nil }
        defer { jsConsumerInfo_Destroy(info) }
        let value = info.pointee
        return ConsumerState(deliveredStream: value.Delivered.Stream, ackFloorStream: value.AckFloor.Stream,
                             ackPending: value.NumAckPending, pending: value.NumPending, redelivered: value.NumRedelivered)
    }

    /// Waits until the consumer has every message of the stream acknowledged
    /// (at least `count` of them), with at most `ackPending` still counted
    /// as awaiting an acknowledgement; false after `timeout` seconds.
    func waitUntilAcknowledged(_ stream: String, _ durable: String, count: UInt64, ackPending: Int64 = 0, timeout: Double = 180) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let state = consumer(stream, durable), state.ackFloorStream >= count, state.pending == 0, state.ackPending <= ackPending {
                return true
            }
            usleep(200_000)
        }
        return false
    }

    /// Every message's payload, in stream order, through an ephemeral pull
    /// consumer that acknowledges nothing.
    func payloads(_ stream: String, subject: String = "pipelined.>", expected: Int, timeout: Double = 120) throws -> [String] {
        var options = jsSubOptions()
        jsSubOptions_Init(&options)
        var result: [String] = []
        try stream.withCString { streamName in
            options.Stream = streamName
            options.Config.AckPolicy = js_AckNone
            options.Config.DeliverPolicy = js_DeliverAll
            var subscription: OpaquePointer?
            var code = jsErrCode(rawValue: 0)
            // A cluster that just lost a member may take a while to answer
            // a consumer request (a new leader): try for up to 30 s.
            var attempt = 0
            while true {
                let status = js_PullSubscribe(&subscription, jetStream, subject, nil, nil, &options, &code)
                if status == NATS_OK { break }
                attempt += 1
                if attempt >= 30 { try natsCheck(status, code: code, "cannot read stream \(stream)") }
                sleep(1)
            }
            defer { natsSubscription_Destroy(subscription) }
            let deadline = Date().addingTimeInterval(timeout)
            var idle = 0
            while Date() < deadline, idle < 3 {
                var list = natsMsgList()
                let status = natsSubscription_Fetch(&list, subscription, 1024, 1000, &code)
                if status == NATS_TIMEOUT {
                    if result.count >= expected { idle += 1 }
                    continue
                }
                try natsCheck(status, code: code, "cannot fetch from \(stream)")
                for index in 0..<Int(list.Count) {
                    let message = list.Msgs[index]
                    let length = Int(natsMsg_GetDataLength(message))
                    let data = natsMsg_GetData(message)
                    result.append(data.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: length), as: UTF8.self) } ?? "")
                }
                natsMsgList_Destroy(&list)
            }
        }
        return result
    }
}
