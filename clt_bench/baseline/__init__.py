"""The baseline stage: the known greater-than circuit, published (baselines/) or rediscovered by
path patching, with faithfulness, necessity, random controls and a neuron analysis."""
