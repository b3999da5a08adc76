"""Protocol: one model reply from raw text to a committed workspace change.

reply_format (code-block replies and function splices) -> schema (pydantic reply models) -> policy
(every path rule and limit, from policies/default.toml) -> hack_screen -> workspace (git-tracked
copy, one commit per accepted reply); pipeline.py runs a reply through all of it and writes the
audit line. prompts.py builds the messages the model sees from the same policy.
"""
