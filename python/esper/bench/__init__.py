"""`esper bench`: every performance figure of Esper measured side by side with
plain PyTorch (and PEFT) in one run, as medians over several interleaved runs."""
