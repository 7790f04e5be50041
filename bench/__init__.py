"""inferd's benchmark: the model's limit, the appliance against it, the API tier's ceiling and the old design.

`python -m bench.run` measures everything in one run and writes bench/RESULTS.md and bench/results.png.
"""
