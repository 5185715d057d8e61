// The Node.js anchor of gzip_compare.sh: stream.pipeline(createReadStream, zlib.createGzip,
// createWriteStream), level 6, Node's defaults otherwise.
//   node gzip_node.js IN OUT
'use strict';
const fs = require('fs');
const zlib = require('zlib');
const { pipeline } = require('stream');

const [, , input, output] = process.argv;
if (!input || !output) {
  console.error('usage: node gzip_node.js IN OUT');
  process.exit(64);
}
pipeline(fs.createReadStream(input), zlib.createGzip({ level: 6 }), fs.createWriteStream(output),
  (err) => {
    if (err) {
      console.error(err);
      process.exit(1);
    }
  });
