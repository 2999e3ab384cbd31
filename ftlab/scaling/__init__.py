"""Speed on one GPU and beyond (lesson 06): torch.compile, whole-step CUDA graphs, channels-last."""
