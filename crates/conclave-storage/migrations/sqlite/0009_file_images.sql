-- What the server read from an uploaded image: its size in pixels and a
-- thumbnail (itself a complete file of the same owner), or why it could not
-- (`image_error`, a code such as `image_too_large`). All NULL for files that
-- are not images, and until the image has been read.
ALTER TABLE files ADD COLUMN width INTEGER CHECK (width > 0);
ALTER TABLE files ADD COLUMN height INTEGER CHECK (height > 0);
ALTER TABLE files ADD COLUMN thumbnail_file_id INTEGER REFERENCES files(id);
ALTER TABLE files ADD COLUMN image_error TEXT;
