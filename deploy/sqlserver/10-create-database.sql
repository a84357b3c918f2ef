-- Optional SQL Server reporting database (docker compose --profile sqlserver).
-- Run by the sqlserver-init service with sqlcmd as `sa`; sqlcmd takes the scripting variable
-- MSSQL_SALESPRED_PASSWORD from the container's environment, so it is on no command line.
-- Idempotent: running it again changes nothing.
IF DB_ID(N'salespred') IS NULL
    CREATE DATABASE salespred;
GO
IF SUSER_ID(N'salespred') IS NULL
    CREATE LOGIN salespred WITH PASSWORD = N'$(MSSQL_SALESPRED_PASSWORD)', DEFAULT_DATABASE = salespred, CHECK_POLICY = ON;
GO
USE salespred;
GO
IF USER_ID(N'salespred') IS NULL
    CREATE USER salespred FOR LOGIN salespred;
-- The pipeline creates and swaps its reporting tables, so it needs DDL inside this database only.
ALTER ROLE db_ddladmin ADD MEMBER salespred;
ALTER ROLE db_datareader ADD MEMBER salespred;
ALTER ROLE db_datawriter ADD MEMBER salespred;
GO
