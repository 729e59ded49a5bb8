/*!
 * express-background-tasks
 * MIT Licensed
 */

'use strict';

// The CommonJS entry. `require('express-background-tasks')` returns the factory itself, as morgan,
// cors and compression do, with every named export (`.defineTask`, `.TimeoutError`, `.default`, …)
// as one of its properties. The build copies this file next to the compiled CommonJS modules.

const exported = require('./index.js');

module.exports = Object.assign(exported.backgroundTasks, exported);
