// codec-bench: the Swift side of bench/codec (see run.sh and BENCHMARKS.md).
//
//   codec-bench chain  [EVENTS] [OUTPUT]   decode → retval filter → encode → write
//   codec-bench decode [EVENTS]            decode only
//   codec-bench sink   [EVENTS] [OUTPUT]   the daemon's path without the kernel:
//       decode into batches of 512 (as the kernel reader), hand each batch on
//       as a new array (as SourceOutput), encode it into a reusable 1 MiB
//       buffer and write it (as the file sink), no filter; for instruction
//       counts (valgrind --tool=callgrind) of what the storm's consumer does
//
// Both modes cycle over the same pool of synthetic `connect` records that
// baseline.c builds (same bytes, same order), so the two programs do the same
// work and, in chain mode, write byte-identical output.
#if canImport(Glibc)
import Glibc
#endif
import PipelineCore

let arguments = CommandLine.arguments
let mode = arguments.count > 1 ? arguments[1] : "chain"
let eventCount = arguments.count > 2 ? Int(arguments[2]) ?? 10_000_000 : 10_000_000
let outputPath = arguments.count > 3 ? arguments[3] : "/dev/null"

/// Added to the records' monotonic `ts`; fixed so output is reproducible.
let wallOffsetNs: Int64 = 1_795_538_045_000_000_000
let poolSize = 4096
let batchSize = 1024

/// The pool of wire records, laid out as `bpf/wire.h` says, and where each starts.
func buildPool() -> (bytes: [UInt8], offsets: [Int]) {
    var bytes: [UInt8] = []
    var offsets: [Int] = []
    func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    let retvals: [Int64] = [0, -111, -101, -13]
    let comms = ["curl", "python3", "nginx", "ssh"]
    for index in 0..<poolSize {
        offsets.append(bytes.count)
        let container = index % 8 == 0
        put(UInt64(1_000_000_000 + index * 1000))                 // ts
        put(UInt32(container ? 4_026_532_000 : 0))                // pid_id
        put(UInt32(container ? 4_026_532_001 : 0))                // mnt_id
        put(UInt32(1 + index % 7))                                // host_ppid
        put(UInt32(1000 + index % 97))                            // host_pid
        put(UInt32(container ? 1 : 0))                            // ppid
        put(UInt32(container ? 10 + index % 5 : 0))               // pid
        put(UInt32(index % 3 == 0 ? 0 : 1000))                    // uid
        put(UInt32(42))                                           // event_id: connect
        put(UInt32(2))                                            // argnum
        put(retvals[index % 4])                                   // retval
        let comm = Array(comms[(index / 4) % 4].utf8)
        bytes += comm + [UInt8](repeating: 0, count: 16 - comm.count)
        bytes.append(1)                                           // INT_T fd
        put(Int32(3 + index % 5))
        bytes.append(12)                                          // SOCKADDR_T
        switch (index / 16) % 4 {
        case 0:
            put(UInt16(2))
            put(UInt16(80 + index % 3).bigEndian)
            bytes += [127, 0, 0, 1] + [UInt8](repeating: 0, count: 8)
        case 1:
            put(UInt16(2))
            put(UInt16(443).bigEndian)
            bytes += [10, 1, 2, 3] + [UInt8](repeating: 0, count: 8)
        case 2:
            put(UInt16(10))
            put(UInt16(8443).bigEndian)
            put(UInt32(0))
            bytes += [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]
            put(UInt32(0))
        default:
            put(UInt16(1))
            let path = Array("/run/app.sock".utf8)
            bytes += path + [UInt8](repeating: 0, count: 108 - path.count)
        }
    }
    offsets.append(bytes.count)
    return (bytes, offsets)
}

/// The retval filter's logic for `success: false`: failures pass, lost records pass.
/// Batches are compacted by `EventFilter`'s default `apply`, as in the daemon.
struct FailuresOnly: EventFilter {
    func includes(_ record: PipelineRecord) -> Bool {
        if case .event(let event) = record { return event.retval != 0 }
        return true
    }
}

func now() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                perror("write")
                exit(1)
            }
            offset += written
        }
    }
}

let pool = buildPool()
let decoder = WireDecoder(wallOffsetNs: wallOffsetNs)
var malformed = 0
let start = now()

switch mode {
case "decode":
    var checksum: Int64 = 0
    pool.bytes.withUnsafeBytes { raw in
        var slot = 0
        for _ in 0..<eventCount {
            let record = UnsafeRawBufferPointer(rebasing: raw[pool.offsets[slot]..<pool.offsets[slot + 1]])
            do {
                let event = try decoder.decode(record)
                checksum &+= event.retval &+ Int64(event.hostPid)
                if case .sockaddr(let address) = event.args[1], case .inet(_, let port) = address {
                    checksum &+= Int64(port)
                }
            } catch {
                malformed += 1
            }
            slot += 1
            if slot == poolSize { slot = 0 }
        }
    }
    let seconds = now() - start
    print("mode=decode events=\(eventCount) malformed=\(malformed) seconds=\(seconds) events_per_s=\(Int(Double(eventCount) / seconds)) checksum=\(checksum)")

case "chain":
    let fd = open(outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
        perror(outputPath)
        exit(1)
    }
    let encoder = NDJSONEncoder()
    let filter = FailuresOnly()
    // One batch, reused: filled by the decoder, filtered in place, encoded, emptied.
    var batch = EventBatch()
    batch.records.reserveCapacity(batchSize)
    var output: [UInt8] = []
    output.reserveCapacity(1 << 21)
    var passed = 0
    var bytesWritten = 0
    pool.bytes.withUnsafeBytes { raw in
        var slot = 0
        var produced = 0
        while produced < eventCount {
            let count = min(batchSize, eventCount - produced)
            for _ in 0..<count {
                let record = UnsafeRawBufferPointer(rebasing: raw[pool.offsets[slot]..<pool.offsets[slot + 1]])
                do {
                    batch.records.append(.event(try decoder.decode(record)))
                } catch {
                    malformed += 1
                }
                slot += 1
                if slot == poolSize { slot = 0 }
            }
            produced += count
            filter.apply(&batch)
            passed += batch.count
            encoder.encode(batch, into: &output)
            if output.count >= 1 << 20 {
                writeAll(fd, output)
                bytesWritten += output.count
                output.removeAll(keepingCapacity: true)
            }
            batch.records.removeAll(keepingCapacity: true)
        }
    }
    writeAll(fd, output)
    bytesWritten += output.count
    close(fd)
    let seconds = now() - start
    print("mode=chain events=\(eventCount) passed=\(passed) malformed=\(malformed) bytes=\(bytesWritten) seconds=\(seconds) events_per_s=\(Int(Double(eventCount) / seconds))")

case "sink":
    let fd = open(outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
        perror(outputPath)
        exit(1)
    }
    let encoder = NDJSONEncoder()
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
    var bytesWritten = 0
    var pending: [PipelineRecord] = []
    pending.reserveCapacity(512)
    func write(_ batch: EventBatch) {
        var index = 0
        while index < batch.records.count {
            let (count, bytes) = encoder.encode(batch.records, from: index, into: output)
            precondition(count > 0, "a record larger than the buffer")
            var offset = 0
            while offset < bytes {
                let written = Glibc.write(fd, output.baseAddress! + offset, bytes - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    perror("write")
                    exit(1)
                }
                offset += written
            }
            bytesWritten += bytes
            index += count
        }
    }
    pool.bytes.withUnsafeBytes { raw in
        var slot = 0
        for _ in 0..<eventCount {
            let record = UnsafeRawBufferPointer(rebasing: raw[pool.offsets[slot]..<pool.offsets[slot + 1]])
            do {
                pending.append(.event(try decoder.decode(record)))
            } catch {
                malformed += 1
            }
            if pending.count >= 512 {
                // The batch is still held (in the daemon by the sink's
                // queue) when the reader starts its next: a new array.
                let batch = EventBatch(pending)
                pending.removeAll(keepingCapacity: true)
                write(batch)
            }
            slot += 1
            if slot == poolSize { slot = 0 }
        }
    }
    write(EventBatch(pending))
    close(fd)
    let seconds = now() - start
    print("mode=sink events=\(eventCount) malformed=\(malformed) bytes=\(bytesWritten) seconds=\(seconds) events_per_s=\(Int(Double(eventCount) / seconds))")

default:
    let usage = "usage: codec-bench chain|decode|sink [EVENTS] [OUTPUT]\n"
    writeAll(2, Array(usage.utf8))
    exit(2)
}
