"""Reading and writing images, landmark CSV files and id lists."""
