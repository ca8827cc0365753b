"""The application layer: what a user runs.

The command line (`cli`), generation into folders (`generate`), the verification jobs that
generate and run on Verilator (`verify`), the end-to-end flow (`flow`), FPGA builds (`fpga`),
the host side of the board's serial link (`board`) and the summaries (`summary`). It sits on
top of the libraries: `epim.sw` (training, quantization, images, models), `epim.hw` (Amaranth
hardware) and `epim.sim` (the Verilator bridge); none of them imports it.
`docs/architecture.md` says why the layers are split this way.
"""
