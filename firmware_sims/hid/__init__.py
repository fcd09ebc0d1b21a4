"""Simulated USB HID devices: real hidraw nodes through /dev/uhid (or seqpacket sockets on a host without
it) carrying the serial simulators' bytes. Encoded from the specifications on their own: no gateway imports."""
