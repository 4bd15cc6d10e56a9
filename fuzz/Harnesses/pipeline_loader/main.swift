import FuzzDriver

runFuzzer(.pipelineLoader)
