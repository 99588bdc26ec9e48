"""The notebook's face: the magics, rendering and sanitising, {var} interpolation, chat files and the panel."""
