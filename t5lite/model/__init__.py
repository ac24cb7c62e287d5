"""The encoder-decoder model (T5 1.0 / 1.1, mT5, BART) as Flax modules whose parameters and
activations carry logical axis names: its frozen Config, products (ops.py), layers, attention and
its masks and fused kernels, the network with unrolled or scanned stacks (stacks.py converts the
two), the parameters' abstract shapes and shardings (params.py), and the losses of its logits."""
