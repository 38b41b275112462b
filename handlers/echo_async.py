"""Asynchronous echo: the IoT Studio template's ``handle_async`` example."""

import asyncio


async def handle_async(req):
    # Stands for an asynchronous operation, such as waiting for an external API response.
    await asyncio.sleep(0.1)
    return {
        "status_code": 200,
        "body": f"Asynchronous response: {req.body.decode('utf-8')}",
    }
