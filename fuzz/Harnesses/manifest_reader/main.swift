import FuzzDriver

runFuzzer(.manifestReader)
