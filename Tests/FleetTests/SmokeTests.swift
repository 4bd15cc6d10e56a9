import CNATS
import Foundation
import NATSClient
import Testing

@Suite(.serialized) struct SmokeTests {
    @Test(.enabled(if: NATSTests.enabled)) func serverStartsAndAnswers() throws {
        let directory = NSTemporaryDirectory() + "fleet-smoke-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try NATSServer(directory: directory)
        defer { server.stop() }
        let inspector = try StreamInspector(urls: [server.url])
        #expect(inspector.connection.isConnected)
        #expect(inspector.messageCount("NONE", timeout: 1) == nil)
    }
}
