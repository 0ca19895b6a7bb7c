"""Greenhouse controller: turns sensor readings into actuator commands.

Reads one reading per line on stdin ("1" when the sensor reads high) and
writes ON or OFF for the actuator, one line per reading, flushed at once so
the actuator follows every change as it happens.
"""

import sys

for line in sys.stdin:
    print("ON" if line.strip() == "1" else "OFF", flush=True)
