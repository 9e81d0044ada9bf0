"""Front doors on the queue: the OpenAI and Ollama APIs, so that clients that already speak them (editors,
notebooks, other chat UIs, agents) gain priority, fair share and visibility without changing.

Each door turns a request into a job of the caller's identity (:func:`ui.api.submit`: priority within its
ceiling, its waiting limit and quota), follows it through the bus like any page (:mod:`ui.doors.follow`), and
translates its events back into the door's protocol. A client that goes away cancels its job.
"""
