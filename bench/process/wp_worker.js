'use strict';
require('workerpool').worker({ noop: () => 0 });
