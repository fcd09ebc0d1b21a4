"""Simulated USB serial devices on pseudo-terminals (ASTM glucose meter, A&D scale, ANT stick + strap,
TaiDoc meters). Encoded from the specifications on their own: no gateway imports."""
