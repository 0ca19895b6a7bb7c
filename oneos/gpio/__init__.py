"""GPIO for pipelines: `oneos-gpio watch|read|write PIN` and the boards under it.

`pins` is the pin layer every command goes through: a Board resolves Blinka pin names
(D4, D17, SDA, ...) and opens input and output pins. Two boards implement it:

- `blinka.BlinkaBoard`: the real one, on Adafruit Blinka's `board` and `digitalio`
  (imported only when it is used, so the simulator never needs them);
- `sim.SimBoard`: a simulated Raspberry Pi header whose pins are files in a directory,
  chosen by `ONEOS_GPIO_SIM=DIR`; tests and demos drive and observe it from outside.

`cli` is the `oneos-gpio` command; its code is the same on both boards.
"""
