import CLibFuzzer
import FuzzChecks
#if canImport(Glibc)
import Glibc
#endif

/// The target the running harness fuzzes; set once by ``runFuzzer(_:)``
/// before libFuzzer starts, read by its one thread after.
nonisolated(unsafe) private var current = FuzzTarget.wireDecoder

/// One input through the current target's checks (fuzz/Checks): what
/// libFuzzer calls for every input it makes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    current.fuzz(data, size)
}

/// A harness's whole `main`: fuzzes `target` with libFuzzer's command line.
///
/// SwiftPM links each executable with its own `main` (the harness's
/// main.swift), which takes the place of libFuzzer's, so this starts
/// libFuzzer's driver itself, and exits with its status.
public func runFuzzer(_ target: FuzzTarget) -> Never {
    current = target
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzOneInput))
}
