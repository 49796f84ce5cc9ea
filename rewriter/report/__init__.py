"""Output formats. Reports only read scans, plans and logs; they return data or text, never print."""
