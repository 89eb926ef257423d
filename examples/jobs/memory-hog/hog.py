"""Allocates more memory than its 64 MB limit allows."""

chunks = []
for _ in range(64):
    chunks.append(bytearray(8 * 1024 * 1024))
print("allocated", len(chunks) * 8, "MB")
