-- Children first so the foreign key never dangles.
DROP TABLE posts;
DROP TABLE documents;
DROP TABLE tags;
DROP TABLE products;
DROP TABLE users;
