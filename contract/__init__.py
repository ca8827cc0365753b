"""The contract between the software side (`epim.sw`) and the hardware side (`epim.hw`).

The two sides meet only in files: the `epim-net-v1` network file and the memory images. This
package holds everything both sides must agree on, once: the format tags, the list of tile
memories and the layout of their words (`images`), the typed tile parameters (`params`) and the
rules that turn a layer graph into hardware units (`graph`). It is pure Python (no NumPy, no
Amaranth, no PyTorch), so either side imports it without pulling in the other's stack.
`docs/architecture.md` says why it lives here.
"""
