#if canImport(Glibc)
import Glibc
#endif
import PipelineCore

/// The file readers (segments, manifests) take a path, so each input is
/// written to a file of this process's own scratch directory first.
enum ScratchFile {
    /// A fresh directory under `$TMPDIR` (or /tmp), made once per process and
    /// removed at exit.
    static let directory: String = {
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(base)/pipelined-fuzz-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "cannot make a scratch directory under \(base)")
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        scratchDirectory = strdup(path)
        atexit {
            guard let directory = scratchDirectory else { return }
            let path = String(cString: directory)
            if let names = try? FileIO.listDirectory(path) {
                for name in names { unlink(path + "/" + name) }
            }
            rmdir(path)
        }
        return path
    }()

    /// Replaces the file `name` in the scratch directory with `bytes` and returns its path.
    static func write(_ bytes: UnsafeRawBufferPointer, named name: String) throws(PropertyViolation) -> String {
        let path = directory + "/" + name
        do throws(SystemError) {
            let fd = try FileIO.open(path, O_WRONLY | O_CREAT | O_TRUNC)
            defer { close(fd) }
            try FileIO.writeAll(fd, bytes, path: path)
        } catch {
            // Not the code under test: the harness itself cannot run here.
            fatalError("cannot write the scratch file \(path): \(error)")
        }
        return path
    }
}

/// For the `atexit` handler, which cannot capture.
nonisolated(unsafe) private var scratchDirectory: UnsafeMutablePointer<CChar>?
