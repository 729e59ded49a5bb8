// Express 4 is installed as `express4` (npm alias) to run the HTTP specs against both majors.
// Its API as used here is the same as Express 5's, so it borrows Express 5's types.
declare module 'express4' {
  export { default } from 'express';
}
