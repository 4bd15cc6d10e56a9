import FuzzDriver

runFuzzer(.ndjsonDecoder)
