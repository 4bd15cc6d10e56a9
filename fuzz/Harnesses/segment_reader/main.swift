import FuzzDriver

runFuzzer(.segmentReader)
