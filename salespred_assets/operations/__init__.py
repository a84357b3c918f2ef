"""Operations from the command line: loading data into MongoDB (synthetic, CSV exports, sellers) and running jobs
into the Dagster instance the UI shows."""
