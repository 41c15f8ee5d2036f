"""Image bytes into pixels: Pillow with one pixel limit and clear errors (`decode`), and the fast way
to a small grey JPEG that hashing takes (`jpeg_draft`)."""
