// Node-RED as a benchmark peer: the flow in flows.json only, no editor, no HTTP.
module.exports = {
  uiPort: 0,
  flowFile: "flows.json",
  httpAdminRoot: false,
  httpNodeRoot: false,
  logging: { console: { level: "warn" } },
};
