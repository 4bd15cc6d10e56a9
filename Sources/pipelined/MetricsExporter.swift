#if canImport(Glibc)
import Glibc
#endif
import Atomics
import CoreMetrics
import PipelineCore
import Prometheus
import Synchronization

/// Publishes the running pipeline's counters in the Prometheus text format.
///
/// Stages never call swift-metrics: they count into their ``StageMetrics``
/// with relaxed atomics, and nothing on the hot path changes when metrics are
/// on. At each scrape, ``render()`` reads every stage's counters (the stages
/// of the plan running now, so a reload's new stages appear and removed ones
/// go) and brings swift-metrics counters and gauges, backed by a
/// `PrometheusCollectorRegistry` of the exporter's own, up to date; the
/// registry then writes the exposition. Counter handles only go up: each
/// scrape adds what the stage counted since the last one.
final class MetricsExporter: Sendable {
    private let runtime: PipelineRuntime
    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    /// Reloads, for `pipelined_reloads_total` and the last good one's time.
    let reloads = ReloadCounts()
    private let published = Mutex(Published())

    init(runtime: PipelineRuntime) {
        self.runtime = runtime
        factory = PrometheusMetricsFactory(registry: registry)
    }

    /// True once every source is attached (`GET /-/ready`).
    var isReady: Bool { runtime.isReady }

    /// The exposition, with every series read now.
    func render() -> [UInt8] {
        let samples = MetricsCatalog.samples(stages: runtime.stages, reloads: reloads)
        return published.withLock { published in
            published.update(samples, factory: factory)
            return registry.emitToBuffer()
        }
    }
}

/// What one series reads at a scrape.
struct MetricSample {
    enum Kind {
        /// A count that only goes up (published through a swift-metrics `Counter`).
        case counter
        /// Seconds that only go up (a `FloatingPointCounter`).
        case secondsCounter
        case gauge
    }

    var name: String
    var kind: Kind
    var labels: [(String, String)]
    var value: Double

    var key: String { name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}" }
}

/// The swift-metrics handles that have been published, by series.
private struct Published: ~Copyable {
    var counters: [String: (handle: CoreMetrics.Counter, value: Int64)] = [:]
    var secondsCounters: [String: (handle: FloatingPointCounter, value: Double)] = [:]
    var gauges: [String: CoreMetrics.Gauge] = [:]

    mutating func update(_ samples: [MetricSample], factory: PrometheusMetricsFactory) {
        var seen = Set<String>()
        for sample in samples {
            let key = sample.key
            seen.insert(key)
            // A counter below what was published restarted (its stage was
            // replaced under another type): it starts again from zero.
            switch sample.kind {
            case .counter:
                var entry = counters[key] ?? (CoreMetrics.Counter(label: sample.name, dimensions: sample.labels, factory: factory), 0)
                let value = Int64(clamping: UInt64(sample.value))
                if value < entry.value {
                    entry.handle.reset()
                    entry.value = 0
                }
                if value > entry.value {
                    entry.handle.increment(by: value - entry.value)
                    entry.value = value
                }
                counters[key] = entry
            case .secondsCounter:
                var entry = secondsCounters[key] ?? (FloatingPointCounter(label: sample.name, dimensions: sample.labels, factory: factory), 0)
                if sample.value < entry.value {
                    entry.handle.reset()
                    entry.value = 0
                }
                if sample.value > entry.value {
                    entry.handle.increment(by: sample.value - entry.value)
                    entry.value = sample.value
                }
                secondsCounters[key] = entry
            case .gauge:
                let gauge = gauges[key] ?? CoreMetrics.Gauge(label: sample.name, dimensions: sample.labels, factory: factory)
                gauge.record(sample.value)
                gauges[key] = gauge
            }
        }
        // A stage the last reload removed: its series go.
        for (key, entry) in counters where !seen.contains(key) {
            entry.handle.destroy()
            counters[key] = nil
        }
        for (key, entry) in secondsCounters where !seen.contains(key) {
            entry.handle.destroy()
            secondsCounters[key] = nil
        }
        for (key, gauge) in gauges where !seen.contains(key) {
            gauge.destroy()
            gauges[key] = nil
        }
    }
}

/// Reload outcomes, counted by the SIGHUP handler.
final class ReloadCounts: Sendable {
    let succeeded = ManagedAtomic<UInt64>(0)
    let failed = ManagedAtomic<UInt64>(0)
    /// Wall-clock time of the last good reload, in nanoseconds; 0 for none yet.
    let lastSuccessNs = ManagedAtomic<Int64>(0)
}

/// Every series pipelined serves, and how each is read (README, "Metrics").
enum MetricsCatalog {
    static func samples(stages: [PipelineRuntime.StageStatus], reloads: ReloadCounts) -> [MetricSample] {
        var samples = processSamples(reloads: reloads)
        for stage in stages {
            let labels = [("stage", stage.id), ("type", stage.type)]
            let counts = stage.metrics.snapshot
            func counter(_ name: String, _ value: UInt64, _ extra: [(String, String)] = []) {
                samples.append(MetricSample(name: name, kind: .counter, labels: labels + extra, value: Double(value)))
            }
            func gauge(_ name: String, _ value: Double) {
                samples.append(MetricSample(name: name, kind: .gauge, labels: labels, value: value))
            }
            counter("pipelined_stage_events_in_total", counts.recordsIn)
            counter("pipelined_stage_events_out_total", counts.recordsOut)
            counter("pipelined_stage_events_lost_total", counts.lost, [("where", stage.kind == .source ? "kernel" : "queue")])
            if stage.kind == .source { counter("pipelined_stage_malformed_records_total", counts.malformed) }
            if stage.kind == .sink { counter("pipelined_stage_written_bytes_total", counts.bytes) }
            if let depth = stage.queueDepth, let capacity = stage.queueCapacity {
                gauge("pipelined_stage_queue_depth_events", Double(depth))
                gauge("pipelined_stage_queue_capacity_events", Double(capacity))
            }
        }
        return samples
    }

    static func processSamples(reloads: ReloadCounts) -> [MetricSample] {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let last = reloads.lastSuccessNs.load(ordering: .relaxed)
        return [
            MetricSample(name: "pipelined_build_info", kind: .gauge, labels: [("version", PipelineCoreInfo.version)], value: 1),
            MetricSample(name: "pipelined_process_resident_memory_bytes", kind: .gauge, labels: [], value: Double(residentBytes())),
            MetricSample(name: "pipelined_process_cpu_seconds_total", kind: .secondsCounter, labels: [], value: cpu),
            MetricSample(name: "pipelined_reloads_total", kind: .counter, labels: [("result", "success")], value: Double(reloads.succeeded.load(ordering: .relaxed))),
            MetricSample(name: "pipelined_reloads_total", kind: .counter, labels: [("result", "failure")], value: Double(reloads.failed.load(ordering: .relaxed))),
            MetricSample(name: "pipelined_last_reload_success_timestamp_seconds", kind: .gauge, labels: [], value: Double(last) / 1e9),
        ]
    }

    /// The resident set, from /proc/self/statm (its second field, in pages).
    static func residentBytes() -> Int {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return 0 }
        let fields = buffer[0..<count].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
