import FuzzDriver

runFuzzer(.wireDecoder)
