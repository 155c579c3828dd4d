"""What each command adds to a batch run: ``explain`` and ``evaluate`` are sets of sinks; ``bench`` and
``merge`` stand beside them."""
