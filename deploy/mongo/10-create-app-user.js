// Runs once, when the mongo container initialises an empty data volume
// (/docker-entrypoint-initdb.d, executed by mongosh as the root user).
// The pipeline and the seller app connect as `salespred`, which may only read and write the
// `salespred` database; the root account is for administration and backups.
const password = process.env.MONGO_APP_PASSWORD;
if (!password) {
  throw new Error("MONGO_APP_PASSWORD must be set (see .env.example)");
}
db.getSiblingDB("salespred").createUser({
  user: "salespred",
  pwd: password,
  roles: [{ role: "readWrite", db: "salespred" }],
});
